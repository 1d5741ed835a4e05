"""Snakemake adapter: lmship.prepare_model.prepare_model."""

from pathlib import Path

from lmship.logs import log_to
from lmship.prepare_model import prepare_model

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    prepare_model(dict(smk.params.spec), Path(smk.output.model))
