"""Snakemake adapter: lmship.generation.generation."""

from pathlib import Path

from lmship.generation import generation, lossless_backends
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    generation(
        [dict(b) for b in smk.params.backends],
        Path(smk.input.host) if smk.input.host else None,
        Path(smk.input.inputs),
        Path(smk.output.csv),
        model=smk.wildcards.model,
        threads=int(smk.wildcards.threads),
        rounds=smk.params.rounds,
        prompts=smk.params.prompts,
        new_tokens=smk.params.new_tokens,
        max_len=smk.params.max_len,
        lossless=lossless_backends([Path(p) for p in smk.input.tiers], smk.params.strictest_tier),
        given_threads=smk.threads,
        log_path=smk.log[0],
    )
