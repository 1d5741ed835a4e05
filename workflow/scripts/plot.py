"""Snakemake adapter: lmship.plot.plot_summary."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.logs import log_to
from lmship.plot import plot_summary

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    plot_summary(Path(smk.input.summary), Path(smk.output.png))
