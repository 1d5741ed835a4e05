"""Snakemake adapter: lmship.sources.prepare_model."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.logs import log_to
from lmship.sources import prepare_model

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    prepare_model(dict(smk.params.spec), Path(smk.output.model))
