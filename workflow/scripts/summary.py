"""Snakemake adapter: lmship.summary.write_summary."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.logs import log_to
from lmship.summary import write_summary

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    write_summary(
        [Path(p) for p in smk.input.timing],
        [Path(p) for p in smk.input.accuracy],
        [Path(p) for p in smk.input.machine],
        {name: Path(p) for name, p in zip(smk.params.models, smk.input.models, strict=True)},
        Path(smk.output.csv),
        Path(smk.output.md),
    )
