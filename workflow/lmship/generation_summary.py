"""The generation table (rule ``generation_summary``): ``generation.csv`` and ``generation.md``.

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
from .status import (
    FAILED,
    FAILURE_FIELDS,
    NOT_APPLICABLE,
    OK,
    Footnotes,
    failure_cell,
    one_line,
    settled,
    with_status,
)

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
    summary = settled(summary)
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
