"""The front-page figure (``results/ship.png``): which format to ship, per model and thread count.

One block per model and sequence length, one row per quality tier and thread
count: the fastest format of that tier or better (:func:`lmship.summary.recommendations`:
only formats whose every stage succeeded, ties within the measured spread, never
one that another beats on both speed and size). Its bar is its speed-up over
PyTorch fp32 in the same run; beside it stand its name, its measured quality
(tier, mean KL divergence, top-1 agreement), its file size and median latency,
and the formats it is tied with. Under each block: the formats that failed, with
the stage that failed (red X), and those that do not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .backends import REFERENCE
from .cli import command, config_default
from .figures import (
    FAILED_COLOR,
    NORMAL,
    NOTE_COLOR,
    SMALL,
    TITLE,
    WIDTH_IN,
    add_notes,
    mark_failed,
    notes_height,
    save_png,
    stacked_blocks,
    wrap,
)
from .plot import _tier_legend, failed_label, not_applicable_note, tier_color
from .status import FAILED
from .summary import recommendations

if TYPE_CHECKING:
    from matplotlib.figure import Figure, SubFigure

#: Lines of text beside each bar, the height of a row (inches), the width of the bar panel (share of the figure).
ROW_LINES = 3
ROW_IN = (NORMAL + (ROW_LINES - 1) * SMALL) * 1.4 / 72 + 0.1
BAR_SHARE = 0.3


def _quality(r: pd.Series) -> str:
    if r["backend"] == REFERENCE:
        return "PyTorch itself: no converted format of this tier or better is faster"
    kld = f"mean KLD {r['kld_mean']:.1e}" if np.isfinite(r["kld_mean"]) else "mean KLD –"
    top1 = f"top-1 {r['top1_pct']:.2f} %" if np.isfinite(r["top1_pct"]) else "top-1 –"
    return f"{r['backend_tier']}: {kld}, {top1}"


def row_text(r: pd.Series, width_in: float) -> tuple[str, str]:
    """What stands beside a recommended format's bar: its name, then quality, size, latency and ties."""
    size = f"{r['size_mb']:.0f} MB" if np.isfinite(r["size_mb"]) else "size –"
    speed = f"{r['median_ms']:.1f} ms" + (" (~unstable)" if r["unstable"] else "")
    lines = [f"{_quality(r)} · {size} · {speed}"]
    if r["tied_labels"]:
        lines.append(f"tied with {r['tied_labels']}")
    details = "\n".join(wrap(line, width_in, SMALL) for line in lines)
    return f"{r['label']}  ({r['backend']})", "\n".join(details.split("\n")[: ROW_LINES - 1])


def _failed_note(block: pd.DataFrame, threads: list[int]) -> list[tuple[str, str]]:
    failed = block[block["status"] == FAILED]
    items = []
    for label, group in failed.groupby("label", sort=False):
        where = "; ".join(dict.fromkeys(failed_label(r) for _, r in group.iterrows()))
        counts = sorted(group["threads"].unique())
        at = "" if counts == threads else f" ({', '.join(str(t) for t in counts)} thread(s))"
        items.append(f"{label}: {where}{at}")
    if not items:
        return []
    return [(wrap("✕ Failed, not considered: " + "; ".join(items) + ".", WIDTH_IN - 0.3), FAILED_COLOR)]


def _block_notes(block: pd.DataFrame, threads: list[int]) -> list[tuple[str, str]]:
    skipped = not_applicable_note(block, WIDTH_IN - 0.3)
    return _failed_note(block, threads) + ([(skipped, NOTE_COLOR)] if skipped else [])


def _draw_block(subfig: SubFigure, model: str, seq: int, block: pd.DataFrame, tiers: list[str]) -> list:
    """One model's rows (tier x thread count); returns the bars' labels to fit once laid out."""
    threads = sorted(block["threads"].dropna().unique().tolist())
    rec = recommendations(block, tiers)
    rows = [(tier, t) for t in threads for tier in tiers]
    notes = _block_notes(block, threads)
    grid = subfig.add_gridspec(2, 2, width_ratios=[BAR_SHARE, 1 - BAR_SHARE],
                               height_ratios=[len(rows) * ROW_IN, max(notes_height(notes), 0.01)])  # fmt: skip
    bars, text_ax = subfig.add_subplot(grid[0, 0]), subfig.add_subplot(grid[0, 1])
    cpu = block["cpu_model"].dropna()
    subfig.suptitle(f"{model}, {seq} tokens: what to ship" + (f" (CPU: {cpu.iloc[0]})" if len(cpu) else ""),
                    fontsize=TITLE, fontweight="bold")  # fmt: skip
    text_width = (WIDTH_IN - 0.3) * (1 - BAR_SHARE) - 0.1
    fitted = []
    for i, (tier, t) in enumerate(rows):
        pick = rec[(rec["tier"] == tier) & (rec["threads"] == t)] if len(rec) else rec
        if pick.empty:
            mark_failed(bars, i, "nothing timed")
            text_ax.text(0.0, i, f"no format of tier {tier} or better succeeded", color=FAILED_COLOR,
                         fontsize=NORMAL, va="center", transform=text_ax.get_yaxis_transform())  # fmt: skip
            continue
        r = pick.iloc[0]
        speedup = float(r["speedup_vs_pytorch"])
        if np.isfinite(speedup):
            (bar,) = bars.barh([i], [speedup], height=0.6, color=tier_color(r["backend_tier"], tiers))
            if r["unstable"]:
                bar.set_hatch("..")
            fitted.append((speedup, bars.text(speedup, i, f" {speedup:.2f}x", va="center", fontsize=NORMAL,
                                              in_layout=False)))  # fmt: skip
        else:
            bars.text(0.02, i, "speed-up –", va="center", fontsize=NORMAL, transform=bars.get_yaxis_transform())
        name, details = row_text(r, text_width)
        top = text_ax.text(0.0, i - 0.45, name, fontsize=NORMAL, fontweight="bold", va="top",
                           transform=text_ax.get_yaxis_transform())  # fmt: skip
        text_ax.annotate(details, (0, 0), xycoords=top, xytext=(0, -1), textcoords="offset points", va="top",
                         fontsize=SMALL, linespacing=1.2)  # fmt: skip
    labels = [f"{t} thread{'s' if t > 1 else ''}: {tier}" for tier, t in rows]
    for k in range(1, len(threads)):
        for ax in (bars, text_ax):
            ax.axhline(k * len(tiers) - 0.5, color="0.6", lw=0.6)
    for ax in (bars, text_ax):
        ax.set_ylim(len(rows) - 0.5, -0.5)
    bars.set_yticks(np.arange(len(rows)), labels, fontsize=NORMAL)
    bars.axvline(1.0, color="k", lw=0.8, ls="--")
    bars.set_xlim(0, 1)
    bars.set_xlabel("speed-up vs PyTorch fp32 (same run)", fontsize=SMALL)
    bars.tick_params(axis="x", labelsize=SMALL)
    bars.grid(axis="x", alpha=0.3)
    text_ax.axis("off")
    if notes:
        add_notes(subfig.add_subplot(grid[1, :]), notes)
    return [(bars, fitted)]


def ship_figure(table: pd.DataFrame, tiers: list[str]) -> Figure:
    """The front-page figure of the summary table (``tiers``: the tier names, strictest first)."""
    blocks = list(table.groupby(["model", "seq_len"], sort=False))
    heights = []
    for _, block in blocks:
        threads = sorted(block["threads"].dropna().unique().tolist())
        heights.append(len(tiers) * len(threads) * ROW_IN + notes_height(_block_notes(block, threads)) + 0.9)
    from matplotlib.patches import Patch

    legend = [h for h in _tier_legend(tiers) if "broken" not in h.get_label()]
    legend.append(Patch(facecolor="white", edgecolor="0.3", hatch="..", label="unstable timing"))
    return stacked_blocks(
        blocks,
        heights,
        lambda sub, key, block: _draw_block(sub, *key, block, tiers),
        legend,
        extra_in=0.45,
        ncol=(len(legend) + 1) // 2,
    )


def ship_plot(summary_csv: Path, out_png: Path, tiers: list[str]) -> Path:
    """Draw ``results/ship.png`` from the summary table (``tiers``: the tier names, strictest first)."""
    return save_png(ship_figure(pd.read_csv(summary_csv, keep_default_na=True), tiers), out_png)


#: ``python -m lmship ship_plot``: its options are the function's parameters.
main = command(ship_plot, defaults={"tiers": list(config_default("quality_tiers"))})


if __name__ == "__main__":
    main()
