"""The summary table: latency percentiles, speed-up, size, accuracy and machine-limit share.

One row per model x sequence length x backend x thread count, built from the
raw timing CSVs (one row per timed run), the accuracy JSONs, the matmul-limit
JSONs and the model's config (operations per forward, see :mod:`lmship.flops`).
Speed-ups divide the PyTorch fp32 median by the backend's median at the same
thread count in the same run; a backend whose accuracy misses its tolerance is
marked FAIL and never recommended.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .backends import BACKENDS, REFERENCE
from .cli import parser
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


ACCURACY_COLUMNS = [
    "model",
    "seq_len",
    "backend",
    "precision",
    "max_abs_diff",
    "mean_abs_diff",
    "cosine_similarity",
    "top1_agreement_pct",
    "top1_agreement_text_pct",
    "perplexity",
    "perplexity_reference",
    "ppl_change_pct",
    "passed",
    "failures",
]
_RUN_COLUMNS = ["precision", "runtime", "runtime_version", "artifact_mb", "peak_rss_mb", "load_s", "cpu_model"]
_KEYS = ["model", "seq_len", "batch", "backend", "threads"]


def build_summary(
    timing_csvs: list[Path],
    accuracy_jsons: list[Path],
    reference_jsons: dict[tuple[str, int], Path],
    machine_jsons: list[Path],
    model_dirs: dict[str, Path],
) -> pd.DataFrame:
    """Combine the raw measurements into the summary table (see module docstring).

    ``reference_jsons`` maps (model, sequence length) to the ``reference_logits`` metrics.
    """
    table = _latency(timing_csvs).merge(
        _accuracy(accuracy_jsons, reference_jsons), on=["model", "seq_len", "backend"], how="left"
    )
    table["accuracy"] = table["accuracy"].fillna("not measured")
    table["label"] = table["backend"].map(lambda b: BACKENDS[b].label if b in BACKENDS else b)
    table = _with_throughput(table, machine_jsons, model_dirs)
    table = _with_ratios_to_reference(table)
    for col in COLUMNS:
        if col not in table:
            table[col] = np.nan
    order = {name: i for i, name in enumerate(BACKENDS)}
    table["_order"] = table["backend"].map(lambda b: order.get(b, len(order)))
    table = table.sort_values(["model", "seq_len", "threads", "_order"])
    return table[COLUMNS].reset_index(drop=True)


def _latency(timing_csvs: list[Path]) -> pd.DataFrame:
    """One row per model, sequence length, batch, backend and threads: percentiles and the run's settings."""
    raw = pd.concat([pd.read_csv(p) for p in timing_csvs], ignore_index=True)
    groups = raw.groupby(_KEYS, sort=False)
    stats = pd.DataFrame(
        {key: latency_stats(group["latency_ms"].to_numpy(dtype=float)) for key, group in groups}
    ).T.rename_axis(_KEYS)
    stats["runs"] = stats["runs"].astype(int)
    table = groups[_RUN_COLUMNS].first().join(stats).reset_index()
    return table.rename(columns={"artifact_mb": "size_mb"})


def _accuracy(accuracy_jsons: list[Path], reference_jsons: dict[tuple[str, int], Path]) -> pd.DataFrame:
    """One row per model, sequence length and backend; the reference is exact by definition."""
    rows = [
        {
            "model": model,
            "seq_len": int(seq),
            "backend": REFERENCE,
            "top1_agreement_pct": 100.0,
            "top1_agreement_text_pct": 100.0,
            "perplexity": read_json(path).get("perplexity_text"),
            "ppl_change_pct": 0.0,
            "max_abs_diff": 0.0,
            "cosine_similarity": 1.0,
            "accuracy": "reference",
        }
        for (model, seq), path in reference_jsons.items()
    ]
    for path in accuracy_jsons:
        a = read_json(path)
        rows.append(
            {
                "model": a["model"],
                "seq_len": int(a["seq_len"]),
                "backend": a["backend"],
                "top1_agreement_pct": a["top1_agreement_pct"],
                "top1_agreement_text_pct": a.get("top1_agreement_text_pct"),
                "perplexity": a.get("perplexity"),
                "ppl_change_pct": a.get("ppl_change_pct"),
                "max_abs_diff": a["max_abs_diff"],
                "cosine_similarity": a["cosine_similarity"],
                "accuracy": "PASS" if a["passed"] else "FAIL",
                "failures": "; ".join(a.get("failures", [])),
            }
        )
    columns = ["model", "seq_len", "backend", "accuracy"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def _with_throughput(table: pd.DataFrame, machine_jsons: list[Path], model_dirs: dict[str, Path]) -> pd.DataFrame:
    """Operations per forward, achieved GOP/s and their share of the machine's matmul limit."""
    limits = {int(m["threads"]): m for m in map(read_json, machine_jsons)}
    gops = [
        forward_ops_from_folder(model_dirs[m], int(b), int(s))["total"] / 1e9 if m in model_dirs else np.nan
        for m, b, s in zip(table["model"], table["batch"], table["seq_len"], strict=True)
    ]
    table["gops_per_forward"] = gops
    table["achieved_gops"] = table["gops_per_forward"] / (table["median_ms"] / 1e3)
    table["machine_limit_gops"] = [
        float(limits[t]["int8_gops" if p == "int8" else "fp32_gflops"]) if t in limits else np.nan
        for t, p in zip(table["threads"], table["precision"], strict=True)
    ]
    table["limit_share_pct"] = 100.0 * table["achieved_gops"] / table["machine_limit_gops"]
    return table


def _with_ratios_to_reference(table: pd.DataFrame) -> pd.DataFrame:
    """Speed-up and size reduction against the reference at the same model, sequence length and threads."""
    keys = ["model", "seq_len", "threads"]
    ref = table.loc[table["backend"] == REFERENCE, [*keys, "median_ms", "size_mb"]]
    ref = ref.rename(columns={"median_ms": "_ref_ms", "size_mb": "_ref_mb"})
    table = table.merge(ref, on=keys, how="left")
    table["speedup_vs_pytorch"] = table["_ref_ms"] / table["median_ms"]
    table["size_reduction"] = table["_ref_mb"] / table["size_mb"]
    return table.drop(columns=["_ref_ms", "_ref_mb"])


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


def summary(
    timing_csvs: list[Path],
    accuracy_jsons: list[Path],
    reference_jsons: dict[tuple[str, int], Path],
    machine_jsons: list[Path],
    model_dirs: dict[str, Path],
    out_csv: Path,
    out_md: Path,
) -> pd.DataFrame:
    """Write the summary table as CSV and Markdown (with the recommendation per thread count)."""
    table = build_summary(timing_csvs, accuracy_jsons, reference_jsons, machine_jsons, model_dirs)
    with atomic_output(Path(out_csv)) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_output(Path(out_md)) as tmp:
        tmp.write_text(to_markdown(table))
    return table


def accuracy_table(jsons: list[Path], out_csv: Path) -> Path:
    """Gather per-backend accuracy JSONs into one CSV."""
    rows = []
    for path in jsons:
        r = read_json(path)
        row = {k: r.get(k) for k in ACCURACY_COLUMNS}
        row["failures"] = "; ".join(r.get("failures", []))
        rows.append(row)
    with atomic_output(Path(out_csv)) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ACCURACY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return Path(out_csv)


def _model_seq(text: str) -> tuple[str, int]:
    model, seq = text.rsplit(":", 1)
    return model, int(seq)


def main(argv: list[str] | None = None) -> None:
    p = parser("summary", __doc__)
    p.add_argument("--timing", type=Path, nargs="+", required=True)
    p.add_argument("--accuracy", type=Path, nargs="*", default=[])
    p.add_argument("--reference", nargs="*", default=[], help="model:seq=path to the reference_logits metrics")
    p.add_argument("--machine", type=Path, nargs="*", default=[])
    p.add_argument("--model-dir", nargs="*", default=[], help="name=path to the prepared HF folder")
    p.add_argument("--out-csv", type=Path, required=True)
    p.add_argument("--out-md", type=Path, required=True)
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    dirs = dict(item.split("=", 1) for item in args.model_dir)
    references = {_model_seq(k): Path(v) for k, v in (item.split("=", 1) for item in args.reference)}
    with log_to(args.log):
        summary(
            args.timing,
            args.accuracy,
            references,
            args.machine,
            {k: Path(v) for k, v in dirs.items()},
            args.out_csv,
            args.out_md,
        )


def main_accuracy_table(argv: list[str] | None = None) -> None:
    p = parser("accuracy_table", accuracy_table.__doc__)
    p.add_argument("--accuracy", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    accuracy_table(args.accuracy, args.out)


if __name__ == "__main__":
    main()
