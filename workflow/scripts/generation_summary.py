"""Snakemake adapter: lmship.generation_summary.generation_summary."""

from pathlib import Path

from lmship.generation_summary import generation_summary
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    generation_summary(
        [Path(p) for p in smk.input.csvs],
        [Path(p) for p in smk.input.bandwidth],
        [Path(p) for p in smk.input.tiers],
        {m: Path(p) for m, p in zip(smk.params.models, smk.input.models, strict=True)},
        {m: Path(p) for m, p in zip(smk.params.host_models, smk.input.host, strict=True)},
        {m: [dict(b) for b in smk.params.backends[m]] for m in smk.params.models},
        Path(smk.output.csv),
        Path(smk.output.md),
        max_round_spread_pct=smk.params.max_round_spread_pct,
        max_p90_ratio=smk.params.max_p90_ratio,
        skipped=dict(smk.params.skipped),
    )
