"""Snakemake adapter: lmship.machine_limit.machine_limit."""

from pathlib import Path

from lmship.logs import log_to
from lmship.machine_limit import machine_limit

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    machine_limit(Path(smk.output.json), int(smk.wildcards.threads))
