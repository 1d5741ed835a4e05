"""Snakemake adapter: lmship.gguf.gguf; the GGUF file is the rule's artifact folder."""

from pathlib import Path

from lmship.gguf import gguf
from lmship.records import run_job

smk = snakemake  # noqa: F821
run_job(
    smk,
    lambda out: gguf(
        Path(smk.input.model), out, quant=smk.wildcards.quant, spec=dict(smk.params.spec), threads=smk.threads
    ),
)
