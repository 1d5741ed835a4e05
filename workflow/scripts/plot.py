"""Snakemake adapter: lmship.plot.plot."""

from pathlib import Path

from lmship.logs import log_to
from lmship.plot import plot

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    plot(Path(smk.input.summary), Path(smk.output.png), list(smk.params.tiers))
