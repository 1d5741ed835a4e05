"""Snakemake adapter: lmship.accuracy_table.accuracy_table."""

from pathlib import Path

from lmship.accuracy_table import accuracy_table
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    accuracy_table([Path(p) for p in smk.input.jsons], Path(smk.output.csv))
