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

Every generating format has a row per thread count with its ``status``
(:mod:`lmship.status`): a format whose graphs failed, whose run crashed, or
whose text a lossless format must match but does not, is a failed row naming
the stage, the reason and its log; the formats that do not apply are listed.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .backends import BACKENDS, REFERENCE
from .files import atomic_output, read_json, size_bytes
from .records import artifact_in
from .rounds import stability
from .status import FAILED, FAILURE_FIELDS, NOT_APPLICABLE, OK, Footnotes, failure_cell, one_line, with_status

log = logging.getLogger(__name__)

REFERENCE_TIER = "reference"


def cache_bytes(host_npz: Path) -> int:
    """Bytes of the K/V cache of every layer (float32): ``max_len`` slots, a sliding layer's ring fewer."""
    with np.load(host_npz) as z:
        return int(2 * int(z["slots"].sum()) * z["kv_heads"] * z["head_dim"] * 4)


def weight_bytes(backend: dict) -> int:
    """Bytes of the artifact that a decode step runs: the file in its artifact folder
    (:func:`lmship.records.artifact_in`), or the weight files of a Hugging Face folder (PyTorch)."""
    path = artifact_in(Path(backend["decode"]))
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))
    return size_bytes(path)


#: The columns of ``generation.csv``, in order.
COLUMNS = [
    "model",
    "backend",
    "label",
    "status",
    "threads",
    "tier",
    "prompt_via",
    "sequences",
    "rounds",
    "ttft_ms",
    "decode_ms_median",
    "decode_ms_p90",
    "decode_spread_pct",
    "unstable",
    "unstable_why",
    "generated_tok_s",
    "prompt_tok_s",
    "load_s",
    "peak_rss_mb",
    "same_text_pct",
    "first_divergence_min",
    "matched_pct",
    "bytes_per_token_mb",
    "bandwidth_gb_s",
    "roofline_ms",
    "roofline_share",
    "vs_pytorch",
    "failed_at",
    "reason",
    "log",
]


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
    skipped: dict[str, dict[str, str]] | None = None,
) -> pd.DataFrame:
    """Aggregate the generation rows into ``out_csv`` and ``out_md`` (with decoded continuations).

    ``max_round_spread_pct`` / ``max_p90_ratio``: when a decode figure is unstable
    (:func:`lmship.rounds.stability` over each sequence's median decode latency).
    A backend with a failed row at a thread count is a failed row there (stage,
    reason, log; no figures); ``skipped`` (model -> backend -> why) adds the formats
    that do not apply as ``not applicable`` rows.
    """
    rows = with_status(
        pd.concat([pd.read_csv(p, dtype={"tokens": str, "first_divergence": str}) for p in csvs], ignore_index=True)
    )
    bandwidth = {int(j["threads"]): float(j["read_gb_s"]) for j in (read_json(p) for p in bandwidth_jsons)}
    tiers = {(j["model"], j["backend"]): j["tier"] for j in (read_json(p) for p in tier_jsons)}
    table = []
    for (model, backend, threads), g in rows.groupby(["model", "backend", "threads"], sort=False):
        tier = REFERENCE_TIER if backend == REFERENCE else tiers.get((model, backend), "")
        head = {"model": model, "backend": backend, "label": _label(backend), "threads": int(threads), "tier": tier}
        failed = g[g["status"] == FAILED]
        if len(failed):
            table.append({**head, "status": FAILED, **{k: one_line(failed[k].iloc[0]) for k in FAILURE_FIELDS}})
            continue
        spec = next(b for b in backends[model] if b["backend"] == backend)
        # a model refused the graphs has no host tables: its cache size, and so its roofline, is unknown
        read = weight_bytes(spec) + (cache_bytes(host_npzs[model]) if model in host_npzs else float("nan"))
        figures = _figures(g, read, bandwidth.get(int(threads), float("nan")), max_round_spread_pct, max_p90_ratio)
        table.append({**head, "status": OK, **figures})
    summary = pd.DataFrame(table, columns=COLUMNS)
    ok = summary[summary["status"] == OK]
    ref = ok[ok["backend"] == REFERENCE].set_index(["model", "threads"])["generated_tok_s"]
    summary["vs_pytorch"] = [
        r.generated_tok_s / ref.get((r.model, r.threads), float("nan")) for r in summary.itertuples()
    ]
    not_applicable = _not_applicable(summary, skipped or {})
    if len(not_applicable):
        summary = pd.concat([summary, not_applicable], ignore_index=True)[COLUMNS]
    summary["unstable"] = [False if pd.isna(v) else bool(v) for v in summary["unstable"]]
    for column in FAILURE_FIELDS:
        summary[column] = summary[column].fillna("")
    with atomic_output(Path(out_csv)) as tmp:
        summary.to_csv(tmp, index=False, float_format="%.6g")
    text = _markdown(summary, rows[rows["status"] == OK], hf_dirs)
    with atomic_output(Path(out_md)) as tmp:
        tmp.write_text(text)
    return summary


def _label(backend: str) -> str:
    return BACKENDS[backend].label if backend in BACKENDS else backend


def _figures(g: pd.DataFrame, read: int, bandwidth_gb_s: float, max_round_spread_pct: float, max_p90_ratio: float):
    """The figures of one backend at one thread count from its rows (one per generated sequence and round)."""
    decode_ms = float(g["decode_ms_median"].median())
    roofline_ms = read / (bandwidth_gb_s * 1e9) * 1e3
    first = pd.to_numeric(g["first_divergence"], errors="coerce")
    steady = stability(
        g["decode_ms_median"].to_numpy(dtype=float),
        g["round"].to_numpy(),
        max_round_spread_pct=max_round_spread_pct,
        max_p90_ratio=max_p90_ratio,
    )
    return {
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
        "bandwidth_gb_s": bandwidth_gb_s,
        "roofline_ms": roofline_ms,
        "roofline_share": roofline_ms / decode_ms,
    }


def _not_applicable(summary: pd.DataFrame, skipped: dict[str, dict[str, str]]) -> pd.DataFrame:
    """One row per model, thread count and configured backend that does not apply to the model, with why."""
    present = set(zip(summary["model"], summary["backend"], strict=True))
    rows = [
        {"model": model, "backend": backend, "label": _label(backend), "status": NOT_APPLICABLE}
        | {"threads": threads, "tier": NOT_APPLICABLE, "reason": one_line(why)}
        for (model, threads), _ in summary.groupby(["model", "threads"], sort=False)
        for backend, why in (skipped.get(model) or {}).items()
        if (model, backend) not in present
    ]
    return pd.DataFrame(rows, columns=COLUMNS)


def _decode(hf_dir: Path, tokens: str) -> str:
    from transformers import AutoTokenizer

    ids = [int(t) for t in str(tokens).split()]
    text = AutoTokenizer.from_pretrained(hf_dir).decode(ids)
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


_TABLE = [
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


def _table_row(r: dict, notes: Footnotes) -> str:
    """One Markdown row; a failed format's row says where and why in place of its time to first token."""
    cells = []
    for key, _ in _TABLE:
        v = r[key]
        if isinstance(v, float):
            v = "" if np.isnan(v) else (f"{v:.0%}" if key == "roofline_share" else f"{v:.3g}")
        if key == "decode_ms_median" and r["unstable"]:
            v = f"{v} ⚠"
        if key == "ttft_ms" and r["status"] == FAILED:
            v = failure_cell(r["failed_at"], r["reason"], r["log"], notes)
        cells.append(str(v))
    return "| " + " | ".join(cells) + " |"


def _markdown(summary: pd.DataFrame, rows: pd.DataFrame, hf_dirs: dict[str, Path]) -> str:
    """``generation.md``: a table per model and thread count, then each tier's fastest continuation.

    ``rows``: the generated sequences of the formats that succeeded.
    """
    out = [
        "# Generation: time to first token, tokens per second, the same text as PyTorch",
        "",
        "Greedy generation from prompts cut from the evaluation prose; PyTorch eager with its own KV cache is "
        "the reference. Decode ms/token: median over sequences (p90 likewise). Roofline share: bytes read per "
        "decode step (weights + the full K/V cache) / measured read bandwidth, over the measured decode time. "
        "'decode steps' in *prompt via*: that format has no prefill graph and runs the prompt token by token, "
        "so its time to first token is the prompt's decode steps. ⚠: an unstable decode figure (its rounds' "
        "medians differ by more than the threshold, or p90 runs away from the median): repeat before relying on it. "
        "A failed format's row names the stage that failed and why (its log in the footnotes).",
        "",
    ]
    notes = Footnotes()
    for (model, threads), block in summary.groupby(["model", "threads"], sort=False):
        out += [f"## {model}, {threads} thread(s)", "", "| " + " | ".join(c[1] for c in _TABLE) + " |"]
        out.append("|" + "---|" * len(_TABLE))
        shown = block[block["status"] != NOT_APPLICABLE]
        ordered = pd.concat(
            [shown[shown["status"] == OK].sort_values("decode_ms_median"), shown[shown["status"] != OK]]
        )
        out += [_table_row(r, notes) for r in ordered.to_dict("records")]
        out.append("")
        skipped = block[block["status"] == NOT_APPLICABLE]
        out += [f"- `{r['backend']}`: {r['reason']}." for _, r in skipped.iterrows()]
        out += [""] if len(skipped) else []
    for model, block in summary[summary["status"] == OK].groupby("model", sort=False):
        out += _continuations(model, block, rows, hf_dirs[model])
    if notes.texts:
        out += ["Logs of the failed stages:", "", *notes.lines(), ""]
    return "\n".join(out) + "\n"


def _continuations(model: str, block: pd.DataFrame, rows: pd.DataFrame, hf_dir: Path) -> list[str]:
    """PyTorch's continuation of the first prompt next to that of the fastest format of each measured tier."""
    if rows.empty:
        return []
    first = rows[(rows["model"] == model) & (rows["prompt"] == 0) & (rows["round"] == rows["round"].min())]
    t = block["threads"].min()
    ref = first[(first["backend"] == REFERENCE) & (first["threads"] == t)]
    if ref.empty:
        return []
    out = [
        f"## {model}: continuation of the first prompt ({t} thread(s))",
        "",
        "| format | tier | text |",
        "|---|---|---|",
        f"| {BACKENDS[REFERENCE].label} | reference | {_decode(hf_dir, ref['tokens'].iloc[0])} |",
    ]
    at_t = block[(block["threads"] == t) & (block["backend"] != REFERENCE) & ~block["tier"].isin([FAILED, ""])]
    for tier_name, group in at_t.groupby("tier", sort=False):
        best = group.sort_values("decode_ms_median").iloc[0]
        seq = first[(first["backend"] == best["backend"]) & (first["threads"] == t)]
        if not seq.empty:
            text = _decode(hf_dir, seq["tokens"].iloc[0])
            out.append(f"| fastest {tier_name}: {best['label']} | {tier_name} | {text} |")
    out.append("")
    return out


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
    from .figures import SMALL, fit_xlim, freeze_layout, new_figure
    from .plot import _tier_legend

    blocks = list(summary.groupby("model", sort=False))
    heights = [_gen_height(block) for _, block in blocks]
    fig = new_figure(sum(heights) + 0.5)
    subfigs = fig.subfigures(len(blocks), 1, squeeze=False, height_ratios=heights)[:, 0]
    to_fit = []
    for subfig, (model, block) in zip(subfigs, blocks, strict=True):
        to_fit += _gen_block(subfig, model, block, tiers)
    fig.legend(handles=_tier_legend(tiers), loc="outside lower center", ncol=3, fontsize=SMALL)
    freeze_layout(fig)
    for ax, fitted in to_fit:
        if fitted:
            fit_xlim(ax, [e for e, _ in fitted], [t for _, t in fitted])
    return fig


def generation_plot(summary_csv: Path, out_png: Path, tiers: list[str]) -> Path:
    """Generated tokens/s, time to first token and share of the roofline per format and thread count
    (:data:`lmship.figures.WIDTH_IN` wide; failed formats marked, the ones that do not apply listed)."""
    from .figures import save_png

    return save_png(generation_figure(pd.read_csv(summary_csv, keep_default_na=True), tiers), out_png)


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
