"""Snakemake adapter: lmship.ship_plot.ship_plot."""

from pathlib import Path

from lmship.logs import log_to
from lmship.ship_plot import ship_plot

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    ship_plot(Path(smk.input.summary), Path(smk.output.png), list(smk.params.tiers))
