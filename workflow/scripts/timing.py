"""Snakemake adapter: lmship.timing.timing."""

from pathlib import Path

from lmship.logs import log_to
from lmship.timing import timing

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    timing(
        smk.params.backend["runtime"],
        Path(smk.input.artifact),
        Path(smk.input.inputs),
        Path(smk.output.csv),
        model=smk.wildcards.model,
        backend=smk.wildcards.backend,
        precision=smk.params.backend["precision"],
        threads=int(smk.wildcards.threads),
        warmup=smk.params.warmup,
        repeats=smk.params.repeats,
        min_seconds=smk.params.min_seconds,
    )
