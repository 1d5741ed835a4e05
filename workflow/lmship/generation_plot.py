"""The generation figure (rule ``generation_plot``): per model, time to first token and decode speed of
every generating format by quality tier, from ``generation.csv`` (:mod:`lmship.generation_summary`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .cli import command, config_default
from .status import FAILED, NOT_APPLICABLE, OK

#: Height of one format's row per thread count in the generation figure, and a panel's extra (inches).
GEN_ROW_IN = 0.18
GEN_PANEL_EXTRA_IN = 0.8


def _order(block: pd.DataFrame) -> list[str]:
    """The formats of one model, fastest generation (at the fewest threads) first, failed ones last."""
    fewest = block[block["threads"] == block["threads"].min()]
    ok = fewest[fewest["status"] == OK].sort_values("generated_tok_s", ascending=False)
    return list(dict.fromkeys([*ok["label"], *block["label"]]))


def _failed_alike(block: pd.DataFrame, label: str) -> bool:
    """Whether the format failed at every thread count, in the same stage."""
    rows = block[block["label"] == label]
    return bool((rows["status"] == FAILED).all() and rows["failed_at"].nunique() == 1)


def _gen_notes(block: pd.DataFrame) -> list[tuple[str, str]]:
    from .figures import NOTE_COLOR, WIDTH_IN
    from .plot import not_applicable_note

    note = not_applicable_note(block, WIDTH_IN - 0.3)
    return [(note, NOTE_COLOR)] if note else []


def _gen_height(block: pd.DataFrame) -> float:
    from .figures import notes_height

    shown = block[block["status"] != NOT_APPLICABLE]
    rows = shown["label"].nunique() * max(shown["threads"].nunique(), 1)
    return rows * GEN_ROW_IN + GEN_PANEL_EXTRA_IN + 0.3 + notes_height(_gen_notes(block))


def _gen_block(subfig, model: str, block: pd.DataFrame, tiers: list[str]) -> list:
    """One model's three panels (generated tok/s, time to first token, roofline share); returns what to fit."""
    from .figures import NORMAL, SMALL, TITLE, add_notes, mark_failed, notes_height
    from .plot import _style_bar, failed_label

    shown = block[block["status"] != NOT_APPLICABLE]
    labels = _order(shown)
    threads = sorted(shown["threads"].unique())
    notes = _gen_notes(block)
    panel = len(labels) * len(threads) * GEN_ROW_IN
    grid = subfig.add_gridspec(2 if notes else 1, 3, height_ratios=[panel, notes_height(notes)][: 1 + bool(notes)])
    subfig.suptitle(f"{model}: greedy generation, one bar per thread count (lighter: more threads)",
                    fontsize=TITLE, fontweight="bold")  # fmt: skip
    width = 0.8 / len(threads)
    panels = [
        ("generated_tok_s", "Generated tokens/s (vs PyTorch)", "tokens/s (higher is better)"),
        ("ttft_ms", "Time to first token", "ms (lower is better)"),
        ("roofline_share", "Share of the bandwidth roofline", "decode time at the memory limit / measured"),
    ]
    to_fit = []
    for c, (value, title, xlabel) in enumerate(panels):
        ax = subfig.add_subplot(grid[0, c])
        fitted = []
        for k, t in enumerate(threads):
            rows = shown[shown["threads"] == t].set_index("label")
            for i, label in enumerate(labels):
                if label not in rows.index:
                    continue
                r, y = rows.loc[label], i + (k - (len(threads) - 1) / 2) * width
                if r["status"] == FAILED:
                    same = _failed_alike(shown, label)
                    if not same or k == 0:  # failed alike at every thread count: one mark for the format
                        mark_failed(ax, i if same else y, failed_label(r) if c == 0 else "")
                    continue
                v = float(r[value])
                if not np.isfinite(v):
                    continue
                (bar,) = ax.barh([y], [v], height=width * 0.9, alpha=1.0 - 0.45 * k / max(len(threads) - 1, 1))
                _style_bar(bar, r["tier"], tiers)
                if c == 0:
                    vs = f" ({r['vs_pytorch']:.2f}x)" if np.isfinite(r["vs_pytorch"]) else ""
                    text = f" {v:.1f}{vs}{' ~unstable' if r['unstable'] else ''}"
                    fitted.append((v, ax.text(v, y, text, va="center", fontsize=SMALL, in_layout=False)))
        if value == "roofline_share":
            ax.axvline(1.0, color="black", lw=0.8, ls="--")
        ax.set_ylim(len(labels) - 0.5, -0.5)
        ax.set_yticks(np.arange(len(labels)), labels if c == 0 else [], fontsize=NORMAL)
        ax.tick_params(axis="x", labelsize=SMALL)
        ax.set_title(title, fontsize=NORMAL)
        ax.set_xlabel(xlabel, fontsize=SMALL)
        ax.set_xlim(0, 1 if value == "roofline_share" else None)
        ax.grid(axis="x", alpha=0.3)
        to_fit.append((ax, fitted))
    if notes:
        add_notes(subfig.add_subplot(grid[1, :]), notes)
    return to_fit


def generation_figure(summary: pd.DataFrame, tiers: list[str]):
    """The generation figure of ``generation.csv``: one block of three panels per model."""
    from .figures import stacked_blocks
    from .plot import _tier_legend

    blocks = list(summary.groupby("model", sort=False))
    heights = [_gen_height(block) for _, block in blocks]
    return stacked_blocks(
        blocks, heights, lambda sub, model, block: _gen_block(sub, model, block, tiers), _tier_legend(tiers)
    )


def generation_plot(summary_csv: Path, out_png: Path, tiers: list[str]) -> Path:
    """Generated tokens/s, time to first token and share of the roofline per format and thread count
    (:data:`lmship.figures.WIDTH_IN` wide; failed formats marked, the ones that do not apply listed)."""
    from .figures import save_png

    return save_png(generation_figure(pd.read_csv(summary_csv, keep_default_na=True), tiers), out_png)


#: ``python -m lmship generation_plot``: its options are the function's parameters.
main = command(generation_plot, defaults={"tiers": list(config_default("quality_tiers"))})
