"""The generation results: one table (``generation.csv``, ``generation.md``) and one figure.

Per model, backend and thread count, from the rows of the ``generation`` stage
(one per generated sequence and round): time to first token, decode latency per
token (median over sequences of each sequence's median; p90 likewise), generated
and prompt tokens/s, load time, peak RSS, speed-up of generated tokens/s over
PyTorch eager (same run), whether the text is PyTorch's, and the decode
roofline: the bytes a decode step reads (the artifact's weights plus the full
K/V cache of ``max_len`` slots that the static graphs read every step) divided
by the measured read bandwidth at that thread count. ``roofline_share`` is the
roofline time over the measured decode time (1.0 = at the memory limit).
``generation.md`` adds PyTorch's continuation of the first prompt next to the
fastest format's of each quality tier, as decoded text. A decode figure is
``unstable`` (marked ⚠) when its rounds' medians spread or its p90 runs away
(:func:`lmship.rounds.stability`, the thresholds of the forward timings).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .backends import BACKENDS, REFERENCE
from .files import atomic_output, read_json, size_bytes
from .rounds import stability

log = logging.getLogger(__name__)

REFERENCE_TIER = "reference"


def cache_bytes(host_npz: Path) -> int:
    """Bytes of the K/V cache of every layer (float32): ``max_len`` slots, a sliding layer's ring fewer."""
    with np.load(host_npz) as z:
        return int(2 * int(z["slots"].sum()) * z["kv_heads"] * z["head_dim"] * 4)


def weight_bytes(backend: dict) -> int:
    """Bytes of the artifact that a decode step runs (PyTorch: the HF folder's weight files)."""
    path = Path(backend["decode"])
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    return size_bytes(path)


def generation_summary(
    csvs: list[Path],
    bandwidth_jsons: list[Path],
    tier_jsons: list[Path],
    hf_dirs: dict[str, Path],
    host_npzs: dict[str, Path],
    backends: dict[str, list[dict]],
    out_csv: Path,
    out_md: Path,
    *,
    max_round_spread_pct: float,
    max_p90_ratio: float,
) -> pd.DataFrame:
    """Aggregate the generation rows into ``out_csv`` and ``out_md`` (with decoded continuations).

    ``max_round_spread_pct`` / ``max_p90_ratio``: when a decode figure is unstable
    (:func:`lmship.rounds.stability` over each sequence's median decode latency).
    """
    rows = pd.concat([pd.read_csv(p, dtype={"tokens": str, "first_divergence": str}) for p in csvs], ignore_index=True)
    bandwidth = {int(j["threads"]): float(j["read_gb_s"]) for j in (read_json(p) for p in bandwidth_jsons)}
    tiers = {(j["model"], j["backend"]): j["tier"] for j in (read_json(p) for p in tier_jsons)}
    table = []
    for (model, backend, threads), g in rows.groupby(["model", "backend", "threads"], sort=False):
        spec = next(b for b in backends[model] if b["backend"] == backend)
        read = weight_bytes(spec) + cache_bytes(host_npzs[model])
        decode_ms = float(g["decode_ms_median"].median())
        roofline_ms = read / (bandwidth[int(threads)] * 1e9) * 1e3 if int(threads) in bandwidth else float("nan")
        first = pd.to_numeric(g["first_divergence"], errors="coerce")
        steady = stability(
            g["decode_ms_median"].to_numpy(),
            g["round"].to_numpy(),
            max_round_spread_pct=max_round_spread_pct,
            max_p90_ratio=max_p90_ratio,
        )
        table.append(
            {
                "model": model,
                "backend": backend,
                "label": BACKENDS[backend].label,
                "threads": int(threads),
                "tier": REFERENCE_TIER if backend == REFERENCE else tiers.get((model, backend), ""),
                "prompt_via": g["prompt_via"].iloc[0],
                "sequences": len(g),
                "rounds": g["round"].nunique(),
                "ttft_ms": float(g["ttft_ms"].median()),
                "decode_ms_median": decode_ms,
                "decode_ms_p90": float(g["decode_ms_p90"].median()),
                "decode_spread_pct": steady["spread_pct"],
                "unstable": steady["unstable"],
                "unstable_why": steady["unstable_why"],
                "generated_tok_s": 1000.0 / decode_ms,
                "prompt_tok_s": float(g["prompt_tok_s"].median()),
                "load_s": float(g["load_s"].median()),
                "peak_rss_mb": float(g["peak_rss_mb"].max()),
                "same_text_pct": 100.0 * float(g["identical"].astype(str).eq("True").mean()),
                "first_divergence_min": float(first.min()) if first.notna().any() else float("nan"),
                "matched_pct": float(g["matched_pct"].mean()),
                "bytes_per_token_mb": read / 1e6,
                "bandwidth_gb_s": bandwidth.get(int(threads), float("nan")),
                "roofline_ms": roofline_ms,
                "roofline_share": roofline_ms / decode_ms,
            }
        )
    summary = pd.DataFrame(table)
    ref = summary[summary["backend"] == REFERENCE].set_index(["model", "threads"])["generated_tok_s"]
    summary["vs_pytorch"] = [
        r.generated_tok_s / ref.get((r.model, r.threads), float("nan")) for r in summary.itertuples()
    ]
    with atomic_output(Path(out_csv)) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.6g")
    text = _markdown(summary, rows, hf_dirs)
    with atomic_output(Path(out_md)) as tmp:
        tmp.write_text(text)
    return summary


def _decode(hf_dir: Path, tokens: str) -> str:
    from transformers import AutoTokenizer

    ids = [int(t) for t in str(tokens).split()]
    text = AutoTokenizer.from_pretrained(hf_dir).decode(ids)
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def _markdown(summary: pd.DataFrame, rows: pd.DataFrame, hf_dirs: dict[str, Path]) -> str:
    out = [
        "# Generation: time to first token, tokens per second, the same text as PyTorch",
        "",
        "Greedy generation from prompts cut from the evaluation prose; PyTorch eager with its own KV cache is "
        "the reference. Decode ms/token: median over sequences (p90 likewise). Roofline share: bytes read per "
        "decode step (weights + the full K/V cache) / measured read bandwidth, over the measured decode time. "
        "'decode steps' in *prompt via*: that format has no prefill graph and runs the prompt token by token, "
        "so its time to first token is the prompt's decode steps. ⚠: an unstable decode figure (its rounds' "
        "medians differ by more than the threshold, or p90 runs away from the median): repeat before relying on it.",
        "",
    ]
    cols = [
        ("label", "format"),
        ("tier", "tier"),
        ("prompt_via", "prompt via"),
        ("ttft_ms", "TTFT ms"),
        ("decode_ms_median", "decode ms/token"),
        ("decode_ms_p90", "p90"),
        ("generated_tok_s", "generated tok/s"),
        ("vs_pytorch", "vs PyTorch"),
        ("prompt_tok_s", "prompt tok/s"),
        ("roofline_share", "of roofline"),
        ("same_text_pct", "same text %"),
        ("first_divergence_min", "first divergence"),
        ("matched_pct", "tokens matched %"),
        ("load_s", "load s"),
        ("peak_rss_mb", "peak RSS MB"),
    ]
    for (model, threads), block in summary.groupby(["model", "threads"], sort=False):
        out += [f"## {model}, {threads} thread(s)", "", "| " + " | ".join(c[1] for c in cols) + " |"]
        out.append("|" + "---|" * len(cols))
        for r in block.sort_values("decode_ms_median").to_dict("records"):
            cells = []
            for key, _ in cols:
                v = r[key]
                if isinstance(v, float):
                    v = "" if np.isnan(v) else (f"{v:.0%}" if key == "roofline_share" else f"{v:.3g}")
                if key == "decode_ms_median" and r["unstable"]:
                    v = f"{v} ⚠"
                cells.append(str(v))
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    for model, block in summary.groupby("model", sort=False):
        first = rows[(rows["model"] == model) & (rows["prompt"] == 0) & (rows["round"] == rows["round"].min())]
        t = block["threads"].min()
        ref = first[(first["backend"] == REFERENCE) & (first["threads"] == t)]
        if ref.empty:
            continue
        out += [
            f"## {model}: continuation of the first prompt ({t} thread(s))",
            "",
            "| format | tier | text |",
            "|---|---|---|",
        ]
        out.append(f"| {BACKENDS[REFERENCE].label} | reference | {_decode(hf_dirs[model], ref['tokens'].iloc[0])} |")
        at_t = block[(block["threads"] == t) & (block["backend"] != REFERENCE)]
        for tier_name, group in at_t.groupby("tier", sort=False):
            best = group.sort_values("decode_ms_median").iloc[0]
            seq = first[(first["backend"] == best["backend"]) & (first["threads"] == t)]
            if not seq.empty:
                text = _decode(hf_dirs[model], seq["tokens"].iloc[0])
                out.append(f"| fastest {tier_name}: {best['label']} | {tier_name} | {text} |")
        out.append("")
    return "\n".join(out) + "\n"


def generation_plot(summary_csv: Path, out_png: Path, tiers: list[str]) -> Path:
    """Generated tokens/s, time to first token and share of the roofline per format and thread count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import _tier_legend, bar_styles

    summary = pd.read_csv(summary_csv)
    models = list(dict.fromkeys(summary["model"]))
    fig, axes = plt.subplots(len(models), 3, figsize=(18, 0.5 * summary["backend"].nunique() + 3), squeeze=False)
    for row, model in zip(axes, models, strict=True):
        block = summary[summary["model"] == model]
        threads = sorted(block["threads"].unique())
        labels = list(dict.fromkeys(block.sort_values("generated_tok_s")["label"]))
        for ax, (value, title) in zip(
            row,
            [
                ("generated_tok_s", "generated tokens/s"),
                ("ttft_ms", "time to first token (ms)"),
                ("roofline_share", "share of the bandwidth roofline"),
            ],
            strict=True,
        ):
            width = 0.8 / len(threads)
            y = np.arange(len(labels))
            for i, t in enumerate(threads):
                sub = block[block["threads"] == t].set_index("label").reindex(labels)
                styles = bar_styles(sub.reset_index(), tiers)
                bars = ax.barh(
                    y + i * width,
                    sub[value].to_numpy(dtype=float),
                    height=width,
                    color=[c for c, _ in styles],
                    edgecolor="black" if i else "none",
                    alpha=1.0 if i == 0 else 0.6,
                    label=f"{t} thread(s)",
                )
                for bar, (_, hatch) in zip(bars, styles, strict=True):
                    bar.set_hatch(hatch)  # broken formats hatched, as in plot.png
            ax.set_yticks(y + 0.4 - width / 2, labels)
            ax.set_title(f"{model}: {title}")
            ax.grid(axis="x", alpha=0.3)
        row[0].legend(handles=_tier_legend(tiers), loc="lower right", fontsize=8)
        row[2].axvline(1.0, color="black", lw=0.8, ls="--")
    fig.suptitle("Generation (bars per thread count: solid = fewest threads, outlined = more)")
    fig.tight_layout()
    with atomic_output(Path(out_png)) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(out_png)


def main_generation_plot(argv: list[str] | None = None) -> None:
    from .cli import config_default, parser
    from .logs import log_to

    p = parser("generation_plot", generation_plot.__doc__ or "")
    p.add_argument("--summary", type=Path, required=True, help="results/generation.csv")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        generation_plot(args.summary, args.out, list(config_default("quality_tiers")))
