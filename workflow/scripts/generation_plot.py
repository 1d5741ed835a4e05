"""Snakemake adapter: lmship.generation_plot.generation_plot."""

from pathlib import Path

from lmship.generation_plot import generation_plot
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    generation_plot(Path(smk.input.summary), Path(smk.output.png), list(smk.params.tiers))
