"""Snakemake adapter: lmship.host_tables.host_tables."""

from pathlib import Path

from lmship.host_tables import host_tables
from lmship.logs import log_to

smk = snakemake  # noqa: F821

with log_to(smk.log[0]):
    host_tables(
        Path(smk.input.model),
        Path(smk.output.npz),
        prompt_len=smk.params.prompt_len,
        max_len=int(smk.wildcards.seq),
    )
