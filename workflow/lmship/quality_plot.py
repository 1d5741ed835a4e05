"""The quality figure (rule ``quality_plot``): speed-up over PyTorch against mean KL divergence, with the
quality tiers' bands (drawn by :func:`lmship.plot.quality_figure`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .cli import command
from .figures import save_png
from .plot import quality_figure


def quality_plot(summary_csv: Path, out_png: Path, tiers: dict[str, dict]) -> Path:
    """Draw ``results/quality.png``: speed-up vs mean KLD per format and thread count, tier bands shaded."""
    return save_png(quality_figure(pd.read_csv(summary_csv, keep_default_na=True), tiers), out_png)


#: ``python -m lmship quality_plot``: its options are the function's parameters.
main = command(quality_plot, config={"tiers": ("quality_tiers",)})
