"""Snakemake adapter: lmship.quality_plot.quality_plot."""

from pathlib import Path

from lmship.logs import log_to
from lmship.quality_plot import quality_plot

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    quality_plot(Path(smk.input.summary), Path(smk.output.png), dict(smk.params.tiers))
