"""The comparison figure: one block of six panels per model and sequence length.

Panels: latency (median, p10-p90 whiskers, per thread count); speed-up vs
PyTorch fp32; file size; top-1 agreement with PyTorch; perplexity change;
achieved throughput as a share of the CPU's measured matmul limit. Backends
that miss their accuracy tolerance are hatched and labelled FAIL in every
panel, so a fast but broken format never looks like the winner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .backends import BACKENDS, REFERENCE
from .cli import parser
from .files import atomic_output
from .summary import recommendations

PASS_COLOR = "#2b7bba"
FAIL_COLOR = "#d62728"
REF_COLOR = "#7f7f7f"


def _bar_colors(block: pd.DataFrame) -> list[str]:
    colors = []
    for _, r in block.iterrows():
        if r["backend"] == REFERENCE:
            colors.append(REF_COLOR)
        elif r["accuracy"] == "FAIL":
            colors.append(FAIL_COLOR)
        else:
            colors.append(PASS_COLOR)
    return colors


def _grouped(ax, block: pd.DataFrame, value: str, threads: list[int], *, err: bool = False, fmt: str = "{:.0f}"):
    labels = list(dict.fromkeys(block["label"]))
    width = 0.8 / max(len(threads), 1)
    y = np.arange(len(labels))
    for i, t in enumerate(threads):
        sub = block[block["threads"] == t].set_index("label").reindex(labels)
        vals = sub[value].to_numpy(dtype=float)
        colors = _bar_colors(sub.reset_index().fillna({"backend": "", "accuracy": ""}))
        alpha = 1.0 - 0.45 * i / max(len(threads) - 1, 1) if len(threads) > 1 else 1.0
        xerr = None
        if err:
            xerr = np.vstack([vals - sub["p10_ms"].to_numpy(float), sub["p90_ms"].to_numpy(float) - vals])
        bars = ax.barh(
            y + (i - (len(threads) - 1) / 2) * width,
            vals,
            height=width,
            color=colors,
            alpha=alpha,
            xerr=xerr,
            capsize=2,
            label=f"{t} thread{'s' if t > 1 else ''}",
        )
        ends = np.fmax(vals, sub["p90_ms"].to_numpy(float)) if err else vals
        for bar, v, end, acc in zip(bars, vals, ends, sub["accuracy"].fillna(""), strict=True):
            if acc == "FAIL":
                bar.set_hatch("//")
            if np.isfinite(v):
                ax.text(end, bar.get_y() + bar.get_height() / 2, " " + fmt.format(v), va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.18)


def _single(ax, block: pd.DataFrame, value: str, fmt: str):
    one = block.drop_duplicates("backend")
    labels = one["label"].tolist()
    vals = one[value].to_numpy(dtype=float)
    bars = ax.barh(np.arange(len(labels)), np.nan_to_num(vals), color=_bar_colors(one))
    for bar, v, acc in zip(bars, vals, one["accuracy"], strict=True):
        if acc == "FAIL":
            bar.set_hatch("//")
        text = fmt.format(v) if np.isfinite(v) else "n/a"
        if acc == "FAIL":
            text += "  FAIL"
        ax.text(max(bar.get_width(), 0), bar.get_y() + bar.get_height() / 2, " " + text, va="center", fontsize=7)
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.25)


def _draw_block(subfig, model: str, seq: int, block: pd.DataFrame) -> None:
    """The six panels of one model and sequence length, titled with the recommendation."""
    threads = sorted(block["threads"].unique().tolist())
    cpu = block["cpu_model"].iloc[0]
    batch = block["batch"].iloc[0]
    ship = "; ".join(
        f"{r['threads']} thread{'s' if r['threads'] > 1 else ''}: {r['label']} "
        f"({r['median_ms']:.0f} ms, {r['speedup_vs_pytorch']:.2f}x)"
        for _, r in recommendations(block).merge(block[["backend", "threads", "label"]]).iterrows()
    )
    subfig.suptitle(
        f"{model}: batch {batch} x sequence {seq} tokens, threads {', '.join(map(str, threads))}, CPU: {cpu}\n"
        f"Fastest within tolerance: {ship}",
        fontsize=12,
        fontweight="bold",
    )
    axes = subfig.subplots(2, 3)
    ax = axes[0, 0]
    _grouped(ax, block, "median_ms", threads, err=True, fmt="{:.1f}")
    ax.set_title("Latency per forward pass (median, p10–p90)")
    ax.set_xlabel("ms (lower is better)")
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[0, 1]
    _grouped(ax, block, "speedup_vs_pytorch", threads, fmt="{:.2f}x")
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_title("Speed-up vs PyTorch fp32 (same run, same threads)")
    ax.set_xlabel("x (higher is better)")
    ax = axes[0, 2]
    _single(ax, block, "size_mb", "{:.0f} MB")
    ax.set_title("Model file size")
    ax.set_xlabel("MB")
    ax = axes[1, 0]
    block = block.assign(top1=block["top1_agreement_text_pct"].fillna(block["top1_agreement_pct"]))
    _single(ax, block, "top1", "{:.1f}%")
    ax.set_title("Top-1 next-token agreement with PyTorch (bundled text)")
    ax.set_xlabel("% of text positions (higher is better)")
    ax.set_xlim(0, 115)
    ax = axes[1, 1]
    _single(ax, block, "ppl_change_pct", "{:+.2f}%")
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_title("Perplexity change vs PyTorch on the bundled text")
    ax.set_xlabel("% (closer to 0 is better; log scale beyond ±1 %)")
    ax = axes[1, 2]
    _grouped(ax, block, "limit_share_pct", threads, fmt="{:.0f}%")
    ax.set_title("Achieved GOP/s as share of the CPU's matmul limit")
    ax.set_xlabel("% of measured fp32 (int8: int8) matmul throughput")


def plot(summary_csv: Path, out_png: Path) -> Path:
    """Draw ``results/plot.png`` from the summary table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    table = pd.read_csv(summary_csv)
    blocks = list(table.groupby(["model", "seq_len"], sort=False))
    n_backends = max(block["backend"].nunique() for _, block in blocks)
    height = max(3.2, 0.32 * n_backends + 1.2)
    fig = plt.figure(figsize=(19, height * 2 * len(blocks) + 0.6), layout="constrained")
    subfigs = fig.subfigures(len(blocks), 1, squeeze=False)[:, 0]
    for subfig, ((model, seq), block) in zip(subfigs, blocks, strict=True):
        _draw_block(subfig, model, seq, block)
    fig.legend(
        handles=[
            Patch(color=REF_COLOR, label=f"{BACKENDS[REFERENCE].label} (reference)"),
            Patch(color=PASS_COLOR, label="within accuracy tolerance"),
            Patch(facecolor=FAIL_COLOR, hatch="//", label="FAILS accuracy tolerance: do not ship"),
        ],
        loc="outside lower center",
        ncol=3,
        fontsize=9,
    )
    with atomic_output(Path(out_png)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(out_png)


def main(argv: list[str] | None = None) -> None:
    p = parser("plot", __doc__)
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    plot(args.summary, args.out)


if __name__ == "__main__":
    main()
