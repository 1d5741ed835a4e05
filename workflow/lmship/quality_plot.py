"""The quality figure (rule ``quality_plot``): speed-up over PyTorch against mean KL divergence, with the
quality tiers' bands (drawn by :func:`lmship.plot.quality_figure`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .cli import command
from .figures import (
    save_png,
)
from .plot import quality_figure

if TYPE_CHECKING:
    pass

TIER_COLORS = ("#1a9850", "#2b7bba", "#fdae61", "#9e6ebd", "#8c564b")
BROKEN_COLOR = "#d62728"
REF_COLOR = "#7f7f7f"
#: The smallest mean KLD drawn on the log axis (identical logits give 0).
KLD_FLOOR = 1e-9
#: Height of one format's row in a bar panel, and what a panel needs besides its rows (inches).
ROW_IN = 0.2
PANEL_EXTRA_IN = 0.75


def quality_plot(summary_csv: Path, out_png: Path, tiers: dict[str, dict]) -> Path:
    """Draw ``results/quality.png``: speed-up vs mean KLD per format and thread count, tier bands shaded."""
    return save_png(quality_figure(pd.read_csv(summary_csv, keep_default_na=True), tiers), out_png)


#: ``python -m lmship quality_plot``: its options are the function's parameters.
main = command(quality_plot, config={"tiers": ("quality_tiers",)})
