"""Snakemake adapter: lmship.timing.timing (every backend, interleaved rounds)."""

from pathlib import Path

from lmship.logs import log_to
from lmship.timing import timing

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    timing(
        smk.params.backends,
        Path(smk.input.inputs),
        Path(smk.output.csv),
        model=smk.wildcards.model,
        threads=int(smk.wildcards.threads),
        given_threads=smk.threads,
        rounds=smk.params.rounds,
        warmup=smk.params.warmup,
        repeats=smk.params.repeats,
        min_seconds=smk.params.min_seconds,
        log_path=smk.log[0],
    )
