"""The figures: the comparison (``plot``) and speed against quality (``quality_plot``).

``plot``: one block of six panels per model and sequence length: latency
(median, p10-p90 whiskers, per thread count); speed-up vs PyTorch fp32; file
size; top-1 agreement with PyTorch; mean KL divergence; achieved throughput as
a share of the CPU's measured matmul limit. Bars are coloured by quality tier;
broken formats are red, hatched and labelled BROKEN in every panel, and
unstable timings are marked "~", so a fast but broken format never looks like
the winner.

``quality_plot``: speed-up against mean KL divergence (log scale), one point
per format and thread count, with the tiers' KLD limits shaded: the question
"how fast can I go at the quality I need" at a glance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .backends import BACKENDS, REFERENCE
from .cli import config_default, parser
from .files import atomic_output
from .quality import BROKEN
from .summary import recommendation_text, recommendations

TIER_COLORS = ("#1a9850", "#2b7bba", "#fdae61", "#9e6ebd", "#8c564b")
BROKEN_COLOR = "#d62728"
REF_COLOR = "#7f7f7f"
#: The smallest mean KLD drawn on the log axis (identical logits give 0).
KLD_FLOOR = 1e-9


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


def _grouped(
    ax, block: pd.DataFrame, value: str, threads: list[int], tiers: list[str], *, err: bool = False, fmt: str = "{:.0f}"
):
    labels = list(dict.fromkeys(block["label"]))
    width = 0.8 / max(len(threads), 1)
    y = np.arange(len(labels))
    for i, t in enumerate(threads):
        sub = block[block["threads"] == t].set_index("label").reindex(labels)
        vals = sub[value].to_numpy(dtype=float)
        styles = bar_styles(sub.reset_index(), tiers)
        alpha = 1.0 - 0.45 * i / max(len(threads) - 1, 1) if len(threads) > 1 else 1.0
        xerr = None
        if err:
            xerr = np.vstack([vals - sub["p10_ms"].to_numpy(float), sub["p90_ms"].to_numpy(float) - vals])
        bars = ax.barh(
            y + (i - (len(threads) - 1) / 2) * width,
            vals,
            height=width,
            color=[c for c, _ in styles],
            alpha=alpha,
            xerr=xerr,
            capsize=2,
            label=f"{t} thread{'s' if t > 1 else ''}",
        )
        ends = np.fmax(vals, sub["p90_ms"].to_numpy(float)) if err else vals
        unstable = sub["unstable"].fillna(False).astype(bool)
        for bar, v, end, (_, hatch), shaky in zip(bars, vals, ends, styles, unstable, strict=True):
            bar.set_hatch(hatch)
            if np.isfinite(v):
                text = " " + fmt.format(v) + (" ~unstable" if shaky else "")
                ax.text(end, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=7)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.18)


def _single(ax, block: pd.DataFrame, value: str, fmt: str, tiers: list[str]):
    one = block.drop_duplicates("backend")
    labels = one["label"].tolist()
    vals = one[value].to_numpy(dtype=float)
    styles = bar_styles(one, tiers)
    bars = ax.barh(np.arange(len(labels)), np.nan_to_num(vals), color=[c for c, _ in styles])
    for bar, v, (_, hatch), tier in zip(bars, vals, styles, one["tier"], strict=True):
        bar.set_hatch(hatch)
        text = fmt.format(v) if np.isfinite(v) else "n/a"
        if hatch:
            text += f"  {str(tier).upper()}"
        ax.text(max(bar.get_width(), 0), bar.get_y() + bar.get_height() / 2, " " + text, va="center", fontsize=7)
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)
    ax.margins(x=0.25)


def _draw_block(subfig, model: str, seq: int, block: pd.DataFrame, tiers: list[str]) -> None:
    """The six panels of one model and sequence length, titled with the recommendation per tier."""
    threads = sorted(block["threads"].unique().tolist())
    cpu = block["cpu_model"].iloc[0]
    batch = block["batch"].iloc[0]
    ship = "\n".join(line.replace("**", "").replace("`", "").lstrip("- ") for line in recommendation_text(
        recommendations(block, tiers)
    ))  # fmt: skip
    subfig.suptitle(
        f"{model}: batch {batch} x sequence {seq} tokens, CPU: {cpu}\n{ship}",
        fontsize=11,
        fontweight="bold",
    )
    axes = subfig.subplots(2, 3)
    ax = axes[0, 0]
    _grouped(ax, block, "median_ms", threads, tiers, err=True, fmt="{:.1f}")
    ax.set_title("Latency per forward pass (median, p10–p90)")
    ax.set_xlabel("ms (lower is better)")
    ax.legend(fontsize=7, loc="lower right")
    ax = axes[0, 1]
    _grouped(ax, block, "speedup_vs_pytorch", threads, tiers, fmt="{:.2f}x")
    ax.axvline(1.0, color="k", lw=0.8, ls="--")
    ax.set_title("Speed-up vs PyTorch fp32 (same run, same threads)")
    ax.set_xlabel("x (higher is better)")
    ax = axes[0, 2]
    _single(ax, block, "size_mb", "{:.0f} MB", tiers)
    ax.set_title("Model file size")
    ax.set_xlabel("MB")
    ax = axes[1, 0]
    _single(ax, block, "top1_pct", "{:.2f}%", tiers)
    ax.set_title("Top-1 next-token agreement with PyTorch (prose)")
    ax.set_xlabel("% of prose positions (higher is better)")
    ax.set_xlim(0, 115)
    ax = axes[1, 1]
    _single(ax, block.assign(kld=block["kld_mean"].clip(lower=KLD_FLOOR)), "kld", "{:.1e}", tiers)
    ax.set_xscale("log")
    ax.set_title("Mean KL divergence to PyTorch (prose)")
    ax.set_xlabel("nats per position (lower is better; log scale)")
    ax = axes[1, 2]
    _grouped(ax, block, "limit_share_pct", threads, tiers, fmt="{:.0f}%")
    ax.set_title("Achieved GOP/s as share of the CPU's matmul limit")
    ax.set_xlabel("% of the measured matmul limit in its arithmetic (fp32, bf16 or int8)")


def _tier_legend(tiers: list[str]):
    from matplotlib.patches import Patch

    return [
        Patch(color=REF_COLOR, label=f"{BACKENDS[REFERENCE].label} (reference)"),
        *(Patch(color=tier_color(t, tiers), label=f"tier {t}") for t in tiers),
        Patch(facecolor=BROKEN_COLOR, hatch="//", label=f"{BROKEN}: do not ship"),
    ]


def plot(summary_csv: Path, out_png: Path, tiers: list[str]) -> Path:
    """Draw ``results/plot.png`` from the summary table (``tiers``: the tier names, strictest first)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pd.read_csv(summary_csv)
    blocks = list(table.groupby(["model", "seq_len"], sort=False))
    n_backends = max(block["backend"].nunique() for _, block in blocks)
    height = max(3.2, 0.32 * n_backends + 1.2)
    fig = plt.figure(figsize=(19, height * 2 * len(blocks) + 0.6), layout="constrained")
    subfigs = fig.subfigures(len(blocks), 1, squeeze=False)[:, 0]
    for subfig, ((model, seq), block) in zip(subfigs, blocks, strict=True):
        _draw_block(subfig, model, seq, block, tiers)
    fig.legend(handles=_tier_legend(tiers), loc="outside lower center", ncol=len(tiers) + 2, fontsize=9)
    with atomic_output(Path(out_png)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(out_png)


def quality_points(table: pd.DataFrame) -> pd.DataFrame:
    """What ``quality_plot`` draws: one point per format and thread count (the reference at KLD 0 is left out)."""
    points = table[table["backend"] != REFERENCE].dropna(subset=["speedup_vs_pytorch"]).copy()
    points["kld_drawn"] = points["kld_mean"].fillna(np.inf).clip(lower=KLD_FLOOR)
    return points


def quality_plot(summary_csv: Path, out_png: Path, tiers: dict[str, dict]) -> Path:
    """Draw ``results/quality.png``: speed-up vs mean KLD per format and thread count, tier bands shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(tiers)
    table = pd.read_csv(summary_csv)
    blocks = list(table.groupby(["model", "seq_len"], sort=False))
    fig, axes = plt.subplots(1, len(blocks), figsize=(9 * len(blocks), 6.5), squeeze=False, layout="constrained")
    markers = ["o", "s", "^", "D", "v", "P"]
    for ax, ((model, seq), block) in zip(axes[0], blocks, strict=True):
        points = quality_points(block)
        finite = points["kld_drawn"][np.isfinite(points["kld_drawn"])]
        right = max(float(finite.max()) * 3 if len(finite) else 1.0, max(t["max_mean_kld"] for t in tiers.values()) * 3)
        edge = KLD_FLOOR / 3
        for name in names:  # strictest first: each band from the previous limit to this tier's limit
            limit = tiers[name]["max_mean_kld"]
            ax.axvspan(edge, limit, color=tier_color(name, names), alpha=0.12, lw=0)
            ax.text(np.sqrt(edge * limit), 0.02, name, transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
            edge = limit
        ax.axvspan(edge, right, color=BROKEN_COLOR, alpha=0.08, lw=0, hatch="//")
        threads = sorted(points["threads"].unique())
        for _, r in points.iterrows():
            marker = markers[threads.index(r["threads"]) % len(markers)]
            kld = r["kld_drawn"] if np.isfinite(r["kld_drawn"]) else right / 1.5
            color = tier_color(r["tier"], names)
            hollow = bool(r.get("unstable", False))
            ax.scatter(kld, r["speedup_vs_pytorch"], marker=marker, s=60, edgecolors=color,
                       facecolors="none" if hollow else color, linewidths=1.5, zorder=3)  # fmt: skip
            ax.annotate(f"{r['backend']} t{r['threads']}", (kld, r["speedup_vs_pytorch"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")  # fmt: skip
        for t in threads:
            ax.scatter([], [], marker=markers[threads.index(t) % len(markers)], color="k", label=f"{t} thread(s)")
        ax.scatter([], [], marker="o", facecolors="none", edgecolors="k", label="unstable timing")
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlim(KLD_FLOOR / 3, right)
        ax.set_xlabel(f"mean KL divergence to PyTorch on the prose (nats; identical logits drawn at {KLD_FLOOR:g})")
        ax.set_ylabel("speed-up vs PyTorch fp32 (same run)")
        ax.set_title(f"{model}, sequence {seq}: speed against quality (bands: tiers' KLD limits)")
        ax.legend(fontsize=8, loc="upper left")
        ax.grid(alpha=0.3)
    with atomic_output(Path(out_png)) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return Path(out_png)


def main(argv: list[str] | None = None) -> None:
    p = parser("plot", __doc__)
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    plot(args.summary, args.out, list(config_default("quality_tiers")))


def main_quality_plot(argv: list[str] | None = None) -> None:
    p = parser("quality_plot", quality_plot.__doc__)
    p.add_argument("--summary", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    quality_plot(args.summary, args.out, config_default("quality_tiers"))


if __name__ == "__main__":
    main()
