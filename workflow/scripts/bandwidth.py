"""Snakemake adapter: lmship.bandwidth.bandwidth."""

from pathlib import Path

from lmship.bandwidth import bandwidth
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    bandwidth(Path(smk.output.json), int(smk.wildcards.threads))
