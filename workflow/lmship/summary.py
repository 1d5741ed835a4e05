"""The summary table: latency percentiles, speed-up, size, accuracy and machine-limit share.

One row per model x sequence length x backend x thread count, built from the
raw timing CSVs (one row per timed run), the accuracy JSONs, the matmul-limit
JSONs and the model's config (operations per forward, see :mod:`lmship.flops`).
Speed-ups divide the PyTorch fp32 median by the backend's median at the same
thread count in the same run; a backend whose accuracy misses its tolerance is
marked FAIL and never recommended.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .backends import BACKENDS, REFERENCE
from .files import atomic_output, read_json
from .flops import forward_ops_from_folder
from .logs import log_to

log = logging.getLogger(__name__)

COLUMNS = [
    "model",
    "seq_len",
    "batch",
    "backend",
    "label",
    "precision",
    "runtime",
    "runtime_version",
    "threads",
    "runs",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "stdev_ms",
    "speedup_vs_pytorch",
    "size_mb",
    "size_reduction",
    "top1_agreement_pct",
    "top1_agreement_text_pct",
    "perplexity",
    "ppl_change_pct",
    "max_abs_diff",
    "cosine_similarity",
    "accuracy",
    "failures",
    "gops_per_forward",
    "achieved_gops",
    "machine_limit_gops",
    "limit_share_pct",
    "peak_rss_mb",
    "load_s",
    "cpu_model",
]


def latency_stats(latencies: np.ndarray) -> dict[str, float]:
    q = np.percentile(latencies, [10, 50, 90, 95, 99])
    return {
        "runs": int(latencies.size),
        "median_ms": float(q[1]),
        "p10_ms": float(q[0]),
        "p90_ms": float(q[2]),
        "p95_ms": float(q[3]),
        "p99_ms": float(q[4]),
        "mean_ms": float(latencies.mean()),
        "stdev_ms": float(latencies.std(ddof=1)) if latencies.size > 1 else 0.0,
    }


def build_summary(
    timing_csvs: list[Path],
    accuracy_jsons: list[Path],
    machine_jsons: list[Path],
    model_dirs: dict[str, Path],
) -> pd.DataFrame:
    """Combine the raw measurements into the summary table (see module docstring)."""
    raw = pd.concat([pd.read_csv(p) for p in timing_csvs], ignore_index=True)
    accuracy = {}
    for path in accuracy_jsons:
        a = read_json(path)
        accuracy[(a["model"], int(a["seq_len"]), a["backend"])] = a
    limits = {int(m["threads"]): m for m in map(read_json, machine_jsons)}

    rows = []
    keys = ["model", "seq_len", "batch", "backend", "threads"]
    for (model, seq, batch, backend, threads), group in raw.groupby(keys, sort=False):
        first = group.iloc[0]
        row = {
            "model": model,
            "seq_len": int(seq),
            "batch": int(batch),
            "backend": backend,
            "label": BACKENDS[backend].label if backend in BACKENDS else backend,
            "precision": first["precision"],
            "runtime": first["runtime"],
            "runtime_version": first["runtime_version"],
            "threads": int(threads),
            **latency_stats(group["latency_ms"].to_numpy(dtype=float)),
            "size_mb": float(first["artifact_mb"]),
            "peak_rss_mb": float(first["peak_rss_mb"]),
            "load_s": float(first["load_s"]),
            "cpu_model": first["cpu_model"],
        }
        acc = accuracy.get((model, int(seq), backend))
        if backend == REFERENCE:
            ppl = next((a["perplexity_reference"] for k, a in accuracy.items() if k[:2] == (model, int(seq))), None)
            row.update(
                top1_agreement_pct=100.0,
                top1_agreement_text_pct=100.0,
                perplexity=ppl,
                ppl_change_pct=0.0,
                max_abs_diff=0.0,
                cosine_similarity=1.0,
                accuracy="reference",
            )
        elif acc is not None:
            row.update(
                top1_agreement_pct=acc["top1_agreement_pct"],
                top1_agreement_text_pct=acc.get("top1_agreement_text_pct"),
                perplexity=acc.get("perplexity"),
                ppl_change_pct=acc.get("ppl_change_pct"),
                max_abs_diff=acc["max_abs_diff"],
                cosine_similarity=acc["cosine_similarity"],
                accuracy="PASS" if acc["passed"] else "FAIL",
                failures="; ".join(acc.get("failures", [])),
            )
        else:
            row.update(accuracy="not measured")
        if model in model_dirs:
            gops = forward_ops_from_folder(model_dirs[model], int(batch), int(seq))["total"] / 1e9
            row["gops_per_forward"] = gops
            row["achieved_gops"] = gops / (row["median_ms"] / 1e3)
            limit = limits.get(int(threads))
            if limit is not None:
                key = "int8_gops" if row["precision"] == "int8" else "fp32_gflops"
                row["machine_limit_gops"] = float(limit[key])
                row["limit_share_pct"] = 100.0 * row["achieved_gops"] / row["machine_limit_gops"]
        rows.append(row)
    table = pd.DataFrame(rows)
    for col in COLUMNS:
        if col not in table:
            table[col] = np.nan
    table = table[COLUMNS]

    ref = table[table["backend"] == REFERENCE].set_index(["model", "seq_len", "threads"])
    for idx, row in table.iterrows():
        key = (row["model"], row["seq_len"], row["threads"])
        if key in ref.index:
            table.loc[idx, "speedup_vs_pytorch"] = ref.loc[key, "median_ms"] / row["median_ms"]
            table.loc[idx, "size_reduction"] = ref.loc[key, "size_mb"] / row["size_mb"]
    order = {name: i for i, name in enumerate(BACKENDS)}
    table["_order"] = table["backend"].map(lambda b: order.get(b, len(order)))
    return table.sort_values(["model", "seq_len", "threads", "_order"]).drop(columns="_order").reset_index(drop=True)


def recommendations(table: pd.DataFrame) -> pd.DataFrame:
    """The fastest backend that passes its accuracy tolerance, per model, sequence length and threads."""
    ok = table[table["accuracy"].isin(["PASS", "reference"])]
    best = ok.loc[ok.groupby(["model", "seq_len", "threads"])["median_ms"].idxmin()]
    return best[["model", "seq_len", "threads", "backend", "median_ms", "speedup_vs_pytorch", "size_mb"]]


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return format(value, spec)


def to_markdown(table: pd.DataFrame) -> str:
    lines = []
    for (model, seq), block in table.groupby(["model", "seq_len"], sort=False):
        cpu = block["cpu_model"].iloc[0]
        lines.append(f"### {model}, sequence length {seq}, batch {block['batch'].iloc[0]} ({cpu})\n")
        lines.append(
            "| backend | threads | median ms | p90 ms | p99 ms | speed-up vs PyTorch | size MB | size reduction "
            "| top-1 agree % (text / all) | perplexity Δ % | max abs diff | GOP/s (share of limit) | accuracy |"
        )
        lines.append("|" + "---|" * 13)
        for _, r in block.iterrows():
            verdict = r["accuracy"] if r["accuracy"] != "FAIL" else f"**FAIL** ({r['failures']})"
            share = (
                f"{_fmt(r['achieved_gops'], '.0f')} ({_fmt(r['limit_share_pct'], '.0f')}%)"
                if not pd.isna(r["achieved_gops"])
                else "–"
            )
            lines.append(
                f"| {r['label']} | {r['threads']} | {_fmt(r['median_ms'], '.1f')} | {_fmt(r['p90_ms'], '.1f')} "
                f"| {_fmt(r['p99_ms'], '.1f')} | {_fmt(r['speedup_vs_pytorch'], '.2f')}x | {_fmt(r['size_mb'], '.1f')} "
                f"| {_fmt(r['size_reduction'], '.2f')}x "
                f"| {_fmt(r['top1_agreement_text_pct'], '.1f')} / {_fmt(r['top1_agreement_pct'], '.1f')} "
                f"| {_fmt(r['ppl_change_pct'], '+.2f')} | {_fmt(r['max_abs_diff'], '.2g')} | {share} | {verdict} |"
            )
        lines.append("")
        best = recommendations(block)
        for _, b in best.iterrows():
            lines.append(
                f"- **{b['threads']} thread(s): ship `{b['backend']}`**: {b['median_ms']:.1f} ms, "
                f"{_fmt(b['speedup_vs_pytorch'], '.2f')}x PyTorch, {b['size_mb']:.0f} MB, "
                "within its accuracy tolerance."
            )
        lines.append("")
    return "\n".join(lines)


def write_summary(
    timing_csvs: list[Path],
    accuracy_jsons: list[Path],
    machine_jsons: list[Path],
    model_dirs: dict[str, Path],
    out_csv: Path,
    out_md: Path,
) -> pd.DataFrame:
    table = build_summary(timing_csvs, accuracy_jsons, machine_jsons, model_dirs)
    with atomic_output(Path(out_csv)) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_output(Path(out_md)) as tmp:
        tmp.write_text(to_markdown(table))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmship summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--timing", type=Path, nargs="+", required=True)
    parser.add_argument("--accuracy", type=Path, nargs="*", default=[])
    parser.add_argument("--machine", type=Path, nargs="*", default=[])
    parser.add_argument("--model-dir", nargs="*", default=[], help="name=path to the prepared HF folder")
    parser.add_argument("--out-csv", type=Path, required=True)
    parser.add_argument("--out-md", type=Path, required=True)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    dirs = dict(item.split("=", 1) for item in args.model_dir)
    with log_to(args.log):
        write_summary(
            args.timing,
            args.accuracy,
            args.machine,
            {k: Path(v) for k, v in dirs.items()},
            args.out_csv,
            args.out_md,
        )


if __name__ == "__main__":
    main()
