"""Snakemake adapter: lmship.summary.summary."""

from pathlib import Path

from lmship.logs import log_to
from lmship.summary import summary

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    summary(
        [Path(p) for p in smk.input.timing],
        [Path(p) for p in smk.input.accuracy],
        {(m, int(s)): Path(p) for (m, s), p in zip(smk.params.references, smk.input.references, strict=True)},
        [Path(p) for p in smk.input.machine],
        {name: Path(p) for name, p in zip(smk.params.models, smk.input.models, strict=True)},
        Path(smk.output.csv),
        Path(smk.output.md),
        tiers=list(smk.params.tiers),
        max_round_spread_pct=smk.params.max_round_spread_pct,
        max_p90_ratio=smk.params.max_p90_ratio,
        skipped=dict(smk.params.skipped),
    )
