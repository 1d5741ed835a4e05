"""Snakemake adapter: lmship.reference_logits.reference_logits."""

from pathlib import Path

from lmship.reference_logits import reference_logits
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    reference_logits(
        Path(smk.input.model),
        Path(smk.input.inputs),
        Path(smk.output.logits),
        Path(smk.output.metrics),
        threads=smk.threads,
    )
