"""The figures: the comparison (``plot``) and speed against quality (``quality_plot``).

Both are :data:`lmship.figures.WIDTH_IN` wide, one block per model and sequence
length below the other, and read the summary table (``summary.csv``).

``plot``: per model and sequence length, one latency panel per thread count
(median with p10-p90 whiskers, labelled with the median, the speed-up over
PyTorch fp32 and the share of the CPU's measured matmul limit in the format's
arithmetic), then file size, top-1 agreement with PyTorch and mean KL
divergence (the value labels give the measured figure, also where the log axis
draws identical logits at its floor). All panels share the formats' rows. Bars
are coloured by quality tier; broken formats are red, hatched and labelled
BROKEN, unstable timings "~unstable", so a fast but broken format never looks
like the winner. A failed format gets a red X and "failed at <stage>" where its
bar would be; the formats that do not apply are listed under the block. The
title gives the recommendation per thread count.

``quality_plot``: per model, sequence length and thread count, the speed-up of
every format against its mean KL divergence (log scale), with the tiers' KLD
limits shaded and every point labelled (labels moved apart, with leader lines,
where formats crowd). Failed formats are listed under the panel in red.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .backends import BACKENDS, REFERENCE
from .cli import command, config_default
from .figures import (
    FAILED_COLOR,
    FAILED_MARKER,
    NORMAL,
    NOTE_COLOR,
    SMALL,
    TITLE,
    WIDTH_IN,
    Point,
    add_notes,
    freeze_layout,
    mark_failed,
    new_figure,
    notes_height,
    place_labels,
    save_png,
    stacked_blocks,
    wrap,
)
from .quality import BROKEN
from .status import FAILED, NOT_APPLICABLE, OK
from .summary import recommendations

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure, SubFigure

TIER_COLORS = ("#1a9850", "#2b7bba", "#fdae61", "#9e6ebd", "#8c564b")
BROKEN_COLOR = "#d62728"
REF_COLOR = "#7f7f7f"
#: The smallest mean KLD drawn on the log axis (identical logits give 0).
KLD_FLOOR = 1e-9
#: Height of one format's row in a bar panel, and what a panel needs besides its rows (inches).
ROW_IN = 0.2
PANEL_EXTRA_IN = 0.75


def tier_color(tier: str, tiers: list[str]) -> str:
    if tier == "reference":
        return REF_COLOR
    if tier in tiers:
        return TIER_COLORS[tiers.index(tier) % len(TIER_COLORS)]
    return BROKEN_COLOR


def bar_styles(block: pd.DataFrame, tiers: list[str]) -> list[tuple[str, str]]:
    """(colour, hatch) of each row's bar: the tier's colour; broken or unmeasured formats hatched red."""
    styles = []
    for tier in block["tier"].fillna(""):
        broken = tier not in tiers and tier != "reference"
        styles.append((tier_color(tier, tiers), "//" if broken else ""))
    return styles


def failed_label(row: pd.Series | dict) -> str:
    """The short mark of a failed format in a figure: where it failed (the reason is in the tables)."""
    return f"failed at {row['failed_at'] or 'an unnamed stage'}"


def not_applicable_note(block: pd.DataFrame, width_in: float) -> str:
    """The formats of ``block`` that do not apply, with why, wrapped to ``width_in`` (empty if none)."""
    skipped = block[block["status"] == NOT_APPLICABLE].drop_duplicates("backend")
    if skipped.empty:
        return ""
    items = []
    for _, r in skipped.iterrows():
        why = str(r["reason"]).removeprefix("not applicable").lstrip(": ")
        items.append(why if r["label"] in why else f"{r['label']}: {why}")
    return wrap(f"Not applicable: {'; '.join(items)}.", width_in)


def _value_label(r: pd.Series) -> str:
    parts = [
        f"{r['median_ms']:.1f} ms",
        f"{r['speedup_vs_pytorch']:.2f}x" if np.isfinite(r["speedup_vs_pytorch"]) else "",
    ]
    if np.isfinite(r["limit_share_pct"]):
        parts.append(f"{r['limit_share_pct']:.0f}%")
    text = " · ".join(p for p in parts if p)
    return text + (" ~unstable" if r["unstable"] else "")


def _style_bar(bar, tier: str, tiers: list[str]) -> None:
    broken = tier not in tiers and tier != "reference"
    bar.set_color(tier_color(tier, tiers))
    bar.set_hatch("//" if broken else "")
    bar.set_edgecolor("white" if broken else bar.get_facecolor())


def _rows_axis(ax: Axes, labels: list[str], *, show: bool) -> None:
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_yticks(np.arange(len(labels)), labels if show else [], fontsize=NORMAL)
    if not show:
        ax.tick_params(axis="y", length=0)
    ax.tick_params(axis="x", labelsize=SMALL)
    ax.grid(axis="x", alpha=0.3)


def _latency_panel(ax: Axes, rows: pd.DataFrame, labels: list[str], tiers: list[str]) -> list:
    """Median latency of each format at one thread count; returns (bar end, value label) for fitting."""
    fitted = []
    for i, label in enumerate(labels):
        if label not in rows.index:
            continue
        r = rows.loc[label]
        if r["status"] == FAILED or not np.isfinite(r["median_ms"]):
            mark_failed(ax, i, failed_label(r) if r["status"] == FAILED else "not timed")
            continue
        (bar,) = ax.barh([i], [r["median_ms"]], height=0.7)
        _style_bar(bar, r["tier"], tiers)
        ax.errorbar(r["median_ms"], i, xerr=[[r["median_ms"] - r["p10_ms"]], [r["p90_ms"] - r["median_ms"]]],
                    fmt="none", ecolor="black", elinewidth=0.8, capsize=2)  # fmt: skip
        end = max(r["median_ms"], r["p90_ms"])
        label = ax.text(end, i, " " + _value_label(r), va="center", fontsize=SMALL, in_layout=False)
        fitted.append((end, label))  # inside the panel once fit_xlim has widened it
    return fitted


def _quality_rows(block: pd.DataFrame) -> pd.DataFrame:
    """One row per format for the quality panels: its first row with measured quality, else its first row."""
    measured = block[block["tier"] != FAILED]
    first = pd.concat([measured, block]).drop_duplicates("label")
    size = block.groupby("label")["size_mb"].max()
    return first.set_index("label").assign(size_mb=size)


def _quality_panel(ax: Axes, rows: pd.DataFrame, labels: list[str], tiers: list[str], value: str, fmt) -> list:
    """One bar per format of a quality figure (``fmt`` turns the measured value into its label)."""
    fitted = []
    for i, label in enumerate(labels):
        r = rows.loc[label]
        v = r[value]
        if r["tier"] == FAILED or (r["status"] == FAILED and not np.isfinite(v)):
            mark_failed(ax, i, failed_label(r))
            continue
        if not np.isfinite(v):
            ax.text(0.01, i, "n/a", transform=ax.get_yaxis_transform(), va="center", fontsize=SMALL)
            continue
        drawn = max(v, KLD_FLOOR) if value == "kld_mean" else v
        (bar,) = ax.barh([i], [drawn], height=0.7)
        _style_bar(bar, r["tier"], tiers)
        text = fmt(v) + ("  BROKEN" if r["tier"] == BROKEN else "")
        fitted.append((drawn, ax.text(drawn, i, " " + text, va="center", fontsize=SMALL, in_layout=False)))
    return fitted


def _kld_text(v: float) -> str:
    return "0 (identical)" if v == 0 else f"{v:.1e}"


def _block_notes(block: pd.DataFrame) -> list[tuple[str, str]]:
    note = not_applicable_note(block, WIDTH_IN - 0.3)
    return [(note, NOTE_COLOR)] if note else []


def _block_height(block: pd.DataFrame, tiers: list[str]) -> float:
    """Inches one model's block needs: title, recommendation, the latency rows, the quality row and notes."""
    shown = block[block["status"] != NOT_APPLICABLE]
    n, threads = shown["label"].nunique(), shown["threads"].nunique()
    panel = n * ROW_IN + PANEL_EXTRA_IN
    notes = notes_height(_header_notes(block, tiers), NORMAL) + notes_height(_block_notes(block))
    return math.ceil(threads / 2) * panel + panel + 0.5 + notes


def _title(model: str, seq: int, block: pd.DataFrame) -> str:
    batch = block["batch"].dropna()
    cpu = block["cpu_model"].dropna()
    head = f"{model}: batch {int(batch.iloc[0]) if len(batch) else '–'} × {seq} tokens, CPU: "
    return head + (cpu.iloc[0] if len(cpu) else "–")


def ship_lines(block: pd.DataFrame, tiers: list[str]) -> list[str]:
    """The recommendation in one line per thread count (tiers with the same winner named together)."""
    rec = recommendations(block, tiers)
    lines = []
    for threads, group in rec.groupby("threads", sort=True) if len(rec) else []:
        parts: list[tuple[list[str], str]] = []
        for _, r in group.iterrows():
            speed = f"{r['speedup_vs_pytorch']:.2f}x" if np.isfinite(r["speedup_vs_pytorch"]) else "–"
            name = f"{r['backend']} (the reference)" if r["backend"] == REFERENCE else r["backend"]
            what = f"{name} {speed}{' ~unstable' if r['unstable'] else ''}"
            if parts and parts[-1][1] == what:
                parts[-1][0].append(r["tier"])
            else:
                parts.append(([r["tier"]], what))
        items = " · ".join(f"{'/'.join(names)}: {what}" for names, what in parts)
        lines.append(f"{threads} thread{'s' if threads > 1 else ''}: {items}")
    return lines


def _header_notes(block: pd.DataFrame, tiers: list[str]) -> list[tuple[str, str]]:
    lines = ship_lines(block, tiers) or ["no format was timed"]
    text = "\n".join(["Fastest format of each tier or better (its ties and quality: ship.png):", *lines])
    legend = ("Latency labels: median · speed-up vs PyTorch fp32 in the same run · share of the CPU's measured "
              "matmul limit in the format's arithmetic (fp32, bf16 or int8).")  # fmt: skip
    return [(wrap(text, WIDTH_IN - 0.3, NORMAL), "black"), (wrap(legend, WIDTH_IN - 0.3, NORMAL), NOTE_COLOR)]


def _draw_block(subfig: SubFigure, model: str, seq: int, block: pd.DataFrame, tiers: list[str]) -> list:
    """The panels of one model and sequence length; returns what :func:`fit_xlim` must fit after the layout."""
    shown = block[block["status"] != NOT_APPLICABLE]
    labels = list(dict.fromkeys(shown["label"]))
    threads = sorted(shown["threads"].unique().tolist())
    cols = min(len(threads), 2)
    latency_rows = math.ceil(len(threads) / cols)
    panel = len(labels) * ROW_IN + PANEL_EXTRA_IN
    header, notes = _header_notes(block, tiers), _block_notes(block)
    ratios = [notes_height(header, NORMAL), *[panel] * (latency_rows + 1)] + ([notes_height(notes)] if notes else [])
    grid = subfig.add_gridspec(len(ratios), 6, height_ratios=ratios)
    subfig.suptitle(_title(model, seq, block), fontsize=TITLE, fontweight="bold")
    add_notes(subfig.add_subplot(grid[0, :]), header, NORMAL)
    to_fit = []
    for k, t in enumerate(threads):
        r, c = divmod(k, cols)
        r += 1
        span = 6 // cols
        ax = subfig.add_subplot(grid[r, c * span : (c + 1) * span])
        rows = shown[shown["threads"] == t].set_index("label")
        to_fit.append((ax, _latency_panel(ax, rows, labels, tiers)))
        _rows_axis(ax, labels, show=c == 0)
        ax.set_title(f"Latency per forward pass, {t} thread{'s' if t > 1 else ''}", fontsize=NORMAL)
        ax.set_xlabel("ms (median, p10–p90; lower is better)", fontsize=SMALL)
        ax.set_xlim(0, 1)
    quality = _quality_rows(shown)
    panels = [
        ("size_mb", lambda v: f"{v:.0f} MB", "File size", "MB", "linear"),
        ("top1_pct", lambda v: f"{v:.2f}%", "Top-1 agreement with PyTorch", "% of prose positions", "linear"),
        ("kld_mean", _kld_text, "Mean KL divergence to PyTorch", "nats (log; lower is better)", "log"),
    ]
    for c, (value, fmt, title, xlabel, scale) in enumerate(panels):
        ax = subfig.add_subplot(grid[latency_rows + 1, 2 * c : 2 * c + 2])
        to_fit.append((ax, _quality_panel(ax, quality, labels, tiers, value, fmt)))
        _rows_axis(ax, labels, show=c == 0)
        ax.set_title(title, fontsize=NORMAL)
        ax.set_xlabel(xlabel, fontsize=SMALL)
        ax.set_xscale(scale)
        ax.set_xlim(KLD_FLOOR / 3 if scale == "log" else 0, 1)
        if value == "top1_pct":
            ax.set_xticks([0, 25, 50, 75, 100])
    if notes:
        add_notes(subfig.add_subplot(grid[-1, :]), notes)
    return to_fit


def _tier_legend(tiers: list[str]):
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    return [
        Patch(color=REF_COLOR, label=f"{BACKENDS[REFERENCE].label} (reference)"),
        *(Patch(color=tier_color(t, tiers), label=f"tier {t}") for t in tiers),
        Patch(facecolor=BROKEN_COLOR, edgecolor="white", hatch="//", label=f"{BROKEN}: do not ship"),
        Line2D([], [], marker=FAILED_MARKER, color=FAILED_COLOR, ls="none", label="failed (see summary.md)"),
    ]


def plot_figure(table: pd.DataFrame, tiers: list[str]) -> Figure:
    """The comparison figure of the summary table (``tiers``: the tier names, strictest first)."""
    blocks = list(table.groupby(["model", "seq_len"], sort=False))
    heights = [_block_height(block, tiers) for _, block in blocks]
    return stacked_blocks(
        blocks, heights, lambda sub, key, block: _draw_block(sub, *key, block, tiers), _tier_legend(tiers)
    )


def plot(summary_csv: Path, out_png: Path, tiers: list[str]) -> Path:
    """Draw ``results/plot.png`` from the summary table (``tiers``: the tier names, strictest first)."""
    return save_png(plot_figure(pd.read_csv(summary_csv, keep_default_na=True), tiers), out_png)


def quality_points(table: pd.DataFrame) -> pd.DataFrame:
    """What ``quality_plot`` draws: one point per format and thread count that succeeded (not the reference)."""
    points = table[(table["backend"] != REFERENCE) & (table["status"].fillna(OK) == OK)]
    points = points.dropna(subset=["speedup_vs_pytorch"]).copy()
    points["kld_drawn"] = points["kld_mean"].fillna(np.inf).clip(lower=KLD_FLOOR)
    return points


def _quality_notes(block: pd.DataFrame) -> list[tuple[str, str]]:
    """The notes under a speed-against-quality panel: the failed formats (red), those that do not apply."""
    notes = []
    failed = block[block["status"] == FAILED]
    if len(failed):
        items = [f"{r['label']} ({failed_label(r)})" for _, r in failed.drop_duplicates("label").iterrows()]
        notes.append((wrap("✕ failed, no point: " + ", ".join(items), WIDTH_IN - 0.3), FAILED_COLOR))
    skipped = not_applicable_note(block, WIDTH_IN - 0.3)
    return [*notes, (skipped, NOTE_COLOR)] if skipped else notes


def _quality_axes(ax: Axes, block: pd.DataFrame, tiers: dict[str, dict], title: str) -> list[Point]:
    """One speed-against-KLD panel: tier bands, the points; returns the points to label."""
    names = list(tiers)
    points = quality_points(block)
    finite = points["kld_drawn"][np.isfinite(points["kld_drawn"])]
    right = max(float(finite.max()) * 3 if len(finite) else 1.0, max(t["max_mean_kld"] for t in tiers.values()) * 3)
    edge = KLD_FLOOR / 3
    for name in names:  # strictest first: each band from the previous limit to this tier's limit
        limit = tiers[name]["max_mean_kld"]
        ax.axvspan(edge, limit, color=tier_color(name, names), alpha=0.12, lw=0)
        ax.text(np.sqrt(edge * limit), 0.985, name, transform=ax.get_xaxis_transform(), ha="center", va="top",
                fontsize=SMALL)  # fmt: skip
        edge = limit
    ax.axvspan(edge, right, color=BROKEN_COLOR, alpha=0.08, lw=0, hatch="//")
    ax.text(np.sqrt(edge * right), 0.985, BROKEN, transform=ax.get_xaxis_transform(), ha="center", va="top",
            fontsize=SMALL)  # fmt: skip
    if points.empty:
        ax.text(0.5, 0.5, "no converted format succeeded", transform=ax.transAxes, ha="center", va="center",
                fontsize=NORMAL, color=FAILED_COLOR)  # fmt: skip
    labels = []
    for _, r in points.iterrows():
        kld = r["kld_drawn"] if np.isfinite(r["kld_drawn"]) else right / 1.5
        color = tier_color(r["tier"], names)
        ax.scatter(kld, r["speedup_vs_pytorch"], marker="o", s=40, edgecolors=color, linewidths=1.4,
                   facecolors="none" if bool(r["unstable"]) else color, zorder=3)  # fmt: skip
        labels.append(Point(kld, r["speedup_vs_pytorch"], r["label"]))
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlim(KLD_FLOOR / 3, right)
    speed = points["speedup_vs_pytorch"]
    low, top = (min(float(speed.min()), 1.0), max(float(speed.max()), 1.0)) if len(speed) else (1.0, 1.0)
    span = max(top - low, 0.2)  # room below the lowest point and above the highest (band names, labels)
    ax.set_ylim(low - 0.08 * span, top + 0.14 * span)
    ax.set_xlabel(f"mean KL divergence to PyTorch on the prose (nats, log; identical logits at {KLD_FLOOR:g})",
                  fontsize=SMALL)  # fmt: skip
    ax.set_ylabel("speed-up vs PyTorch fp32", fontsize=SMALL)
    ax.tick_params(labelsize=SMALL)
    ax.set_title(title, fontsize=NORMAL)
    ax.grid(alpha=0.3)
    return labels


def _label_obstacles(ax: Axes) -> list:
    """What point labels must keep clear of: the panel's texts and the dashed line at PyTorch's speed."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    y = ax.transData.transform((1.0, 1.0))[1]
    line = Bbox.from_extents(frame.x0, y - 1.5, frame.x1, y + 1.5)
    return [*(text.get_window_extent(renderer) for text in ax.texts), line]


#: Height of a speed-against-quality panel with points, and of one without (inches, with its axis labels);
#: what its title, axis labels and tick labels take of it.
PANEL_IN = 4.4
EMPTY_PANEL_IN = 2.0
DECORATION_IN = 0.9


def quality_figure(table: pd.DataFrame, tiers: dict[str, dict]) -> Figure:
    """Speed-up against mean KLD: one panel per model, sequence length and thread count."""
    from matplotlib.lines import Line2D

    panels = [(key, t, block[block["threads"] == t]) for key, block in table.groupby(["model", "seq_len"], sort=False)
              for t in sorted(block["threads"].dropna().unique())]  # fmt: skip
    notes = [_quality_notes(block) for _, _, block in panels]
    # a panel without points (every converted format failed) needs no room for labels
    heights = [PANEL_IN if len(quality_points(block)) else EMPTY_PANEL_IN for _, _, block in panels]
    totals = [h + notes_height(n) for h, n in zip(heights, notes, strict=True)]
    fig = new_figure(sum(totals) + 0.4)
    subfigs = fig.subfigures(len(panels), 1, squeeze=False, height_ratios=totals)[:, 0]
    to_label = []
    for subfig, ((model, seq), t, block), note, height in zip(subfigs, panels, notes, heights, strict=True):
        ratios = [height - DECORATION_IN, notes_height(note)] if note else [height]
        grid = subfig.add_gridspec(len(ratios), 1, height_ratios=ratios)
        ax = subfig.add_subplot(grid[0])
        title = f"{model}, sequence {seq}, {t} thread{'s' if t > 1 else ''}: speed against quality"
        to_label.append((ax, _quality_axes(ax, block, tiers, title)))
        if note:
            add_notes(subfig.add_subplot(grid[1]), note)
    fig.legend(
        handles=[
            Line2D([], [], marker="o", color="0.3", ls="none", label="format (colour: its measured tier)"),
            Line2D([], [], marker="o", markerfacecolor="none", color="0.3", ls="none", label="unstable timing"),
        ],
        loc="outside lower center",
        ncol=2,
        fontsize=SMALL,
    )
    freeze_layout(fig)
    for ax, points in to_label:
        place_labels(ax, points, obstacles=_label_obstacles(ax))
    return fig


#: ``python -m lmship plot``: its options are the function's parameters.
main = command(plot, defaults={"tiers": list(config_default("quality_tiers"))})


if __name__ == "__main__":
    main()
