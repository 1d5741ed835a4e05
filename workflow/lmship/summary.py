"""The summary table: latency, its stability, speed-up, size, quality tier and machine-limit share.

One row per model x sequence length x backend x thread count, built from the
raw timing CSVs (one per model, sequence length and thread count: one run of
interleaved rounds, one row per timed pass), the accuracy JSONs, the
matmul-limit JSONs and the model's config (operations per forward, see
:mod:`lmship.flops`). Speed-ups divide the PyTorch fp32 median by the
backend's median taken in the same run on the same node; a table that would
mix runs or nodes is refused. A figure whose rounds disagree is flagged
unstable (:func:`lmship.rounds.stability`). The recommendation names, per
thread count, the fastest format of each quality tier (or better), ties named
as ties (:func:`lmship.rounds.fastest`), never a broken one.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from . import StageError
from .backends import BACKENDS, REFERENCE
from .cli import config_default, parser
from .files import atomic_output, read_json
from .flops import forward_ops_from_folder
from .logs import log_to
from .machine_limit import limit_of
from .quality import BROKEN
from .rounds import fastest, stability

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
    "rounds",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "p95_ms",
    "p99_ms",
    "mean_ms",
    "stdev_ms",
    "spread_pct",
    "unstable",
    "unstable_why",
    "speedup_vs_pytorch",
    "size_mb",
    "size_reduction",
    "tier",
    "top1_pct",
    "top1_ci95_low",
    "top1_ci95_high",
    "kld_mean",
    "kld_p99",
    "kld_max",
    "perplexity",
    "ppl_change_pct",
    "top1_agreement_pct",
    "max_abs_diff",
    "tier_missed",
    "gops_per_forward",
    "achieved_gops",
    "arithmetic",
    "machine_limit_gops",
    "limit_share_pct",
    "peak_rss_mb",
    "load_s",
    "cpu_model",
    "node",
    "run_id",
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
    "tier",
    "top1_pct",
    "top1_ci95_low",
    "top1_ci95_high",
    "kld_mean",
    "kld_p99",
    "kld_max",
    "perplexity",
    "perplexity_reference",
    "ppl_change_pct",
    "text_positions",
    "top1_agreement_pct",
    "top1_random_pct",
    "kld_mean_random",
    "max_abs_diff",
    "cosine_similarity",
    "tier_missed",
]
_RUN_COLUMNS = ["precision", "runtime", "runtime_version", "artifact_mb", "peak_rss_mb", "load_s", "cpu_model"]
_KEYS = ["model", "seq_len", "batch", "backend", "threads"]
_QUALITY = ["tier", "top1_pct", "top1_ci95_low", "top1_ci95_high", "kld_mean", "kld_p99", "kld_max", "perplexity"]
_QUALITY += ["ppl_change_pct", "top1_agreement_pct", "max_abs_diff"]


def build_summary(
    timing_csvs: list[Path],
    accuracy_jsons: list[Path],
    reference_jsons: dict[tuple[str, int], Path],
    machine_jsons: list[Path],
    model_dirs: dict[str, Path],
    *,
    max_round_spread_pct: float,
    max_p90_ratio: float,
) -> pd.DataFrame:
    """Combine the raw measurements into the summary table (see module docstring).

    ``reference_jsons`` maps (model, sequence length) to the ``reference_logits`` metrics.
    """
    table = _latency(timing_csvs, max_round_spread_pct, max_p90_ratio).merge(
        _accuracy(accuracy_jsons, reference_jsons), on=["model", "seq_len", "backend"], how="left"
    )
    table["tier"] = table["tier"].fillna("not measured")
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


def _one_run(raw: pd.DataFrame) -> None:
    """Refuse timings of one model, sequence length and thread count that come from several runs or nodes."""
    for (model, seq, threads), group in raw.groupby(["model", "seq_len", "threads"]):
        for column, what in (("run_id", "runs"), ("node", "nodes"), ("cpu_model", "CPUs")):
            values = sorted(group[column].astype(str).unique())
            if len(values) > 1:
                raise StageError(
                    f"timings of {model} seq {seq} at {threads} thread(s) come from {len(values)} {what} "
                    f"({', '.join(values)}): a speed-up may only divide figures of one run on one node. "
                    "Delete the timing CSVs under results/<model>/seq<seq>/timing/ and rerun to time all "
                    "backends together."
                )


def _latency(timing_csvs: list[Path], max_round_spread_pct: float, max_p90_ratio: float) -> pd.DataFrame:
    """One row per model, sequence length, batch, backend and threads: percentiles, stability, run."""
    raw = pd.concat([pd.read_csv(p) for p in timing_csvs], ignore_index=True)
    _one_run(raw)
    groups = raw.groupby(_KEYS, sort=False)
    rows = {}
    for key, group in groups:
        latency = group["latency_ms"].to_numpy(dtype=float)
        steady = stability(
            latency,
            group["round"].to_numpy(),
            max_round_spread_pct=max_round_spread_pct,
            max_p90_ratio=max_p90_ratio,
        )
        rows[key] = {
            **latency_stats(latency),
            "rounds": steady["rounds"],
            "spread_pct": steady["spread_pct"],
            "unstable": steady["unstable"],
            "unstable_why": steady["unstable_why"],
        }
    stats = pd.DataFrame(rows).T.rename_axis(_KEYS)
    for column in ("runs", "rounds"):
        stats[column] = stats[column].astype(int)
    stats["unstable"] = stats["unstable"].astype(bool)
    for column in ("median_ms", "p10_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "stdev_ms", "spread_pct"):
        stats[column] = stats[column].astype(float)
    table = groups[[*_RUN_COLUMNS, "node", "run_id"]].first().join(stats).reset_index()
    for _, r in table[table["unstable"]].iterrows():
        log.warning(
            "%s seq %d %s at %d thread(s) is unstable (%s): rerun on a quiet machine",
            r["model"],
            r["seq_len"],
            r["backend"],
            r["threads"],
            r["unstable_why"],
        )
    return table.rename(columns={"artifact_mb": "size_mb"})


def _accuracy(accuracy_jsons: list[Path], reference_jsons: dict[tuple[str, int], Path]) -> pd.DataFrame:
    """One row per model, sequence length and backend; the reference is exact by definition."""
    rows = [
        {
            "model": model,
            "seq_len": int(seq),
            "backend": REFERENCE,
            "tier": "reference",
            "top1_pct": 100.0,
            "kld_mean": 0.0,
            "kld_p99": 0.0,
            "kld_max": 0.0,
            "perplexity": read_json(path).get("perplexity_text"),
            "ppl_change_pct": 0.0,
            "top1_agreement_pct": 100.0,
            "max_abs_diff": 0.0,
        }
        for (model, seq), path in reference_jsons.items()
    ]
    for path in accuracy_jsons:
        a = read_json(path)
        row = {"model": a["model"], "seq_len": int(a["seq_len"]), "backend": a["backend"]}
        row.update({k: a.get(k) for k in _QUALITY})
        row["tier_missed"] = "; ".join(f"{t}: {', '.join(r)}" for t, r in (a.get("tier_missed") or {}).items())
        rows.append(row)
    columns = ["model", "seq_len", "backend", "tier"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def _with_throughput(table: pd.DataFrame, machine_jsons: list[Path], model_dirs: dict[str, Path]) -> pd.DataFrame:
    """Operations per forward, achieved GOP/s and their share of the machine's limit in the backend's arithmetic."""
    limits = {int(m["threads"]): m for m in map(read_json, machine_jsons)}
    gops = [
        forward_ops_from_folder(model_dirs[m], int(b), int(s))["total"] / 1e9 if m in model_dirs else np.nan
        for m, b, s in zip(table["model"], table["batch"], table["seq_len"], strict=True)
    ]
    table["gops_per_forward"] = gops
    table["achieved_gops"] = table["gops_per_forward"] / (table["median_ms"] / 1e3)
    table["arithmetic"] = [BACKENDS[b].arithmetic for b in table["backend"]]
    table["machine_limit_gops"] = [
        limit_of(limits[t], a) if t in limits and limit_of(limits[t], a) else np.nan
        for t, a in zip(table["threads"], table["arithmetic"], strict=True)
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


def recommendations(table: pd.DataFrame, tiers: list[str]) -> pd.DataFrame:
    """Per model, sequence length, threads and tier: the fastest format of that tier or better.

    ``tiers`` are the configured tier names, strictest first; the reference
    counts as the strictest. A broken (or unmeasured) format is never named;
    formats the winner does not beat by more than their measured spread are
    listed as tied (:func:`lmship.rounds.fastest`), the smaller file first.
    """
    rank = {"reference": 0, **{t: i for i, t in enumerate(tiers)}}
    rows = []
    for (model, seq, threads), block in table.groupby(["model", "seq_len", "threads"], sort=False):
        graded = block[block["tier"].isin(list(rank))]
        for tier_name in tiers:
            eligible = graded[graded["tier"].map(rank) <= rank[tier_name]]
            if eligible.empty:
                continue
            winner, tied = fastest(eligible.to_dict("records"))
            rows.append(
                {
                    "model": model,
                    "seq_len": seq,
                    "threads": threads,
                    "tier": tier_name,
                    "backend": winner["backend"],
                    "backend_tier": winner["tier"],
                    "median_ms": winner["median_ms"],
                    "speedup_vs_pytorch": winner["speedup_vs_pytorch"],
                    "size_mb": winner["size_mb"],
                    "unstable": bool(winner["unstable"]),
                    "tied_with": ", ".join(t["backend"] for t in tied),
                }
            )
    return pd.DataFrame(rows)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return format(value, spec)


def recommendation_text(rec: pd.DataFrame) -> list[str]:
    """One line per thread count: the fastest format of each tier or better, ties named."""
    lines = []
    for threads, block in rec.groupby("threads", sort=True):
        parts = []
        for _, r in block.iterrows():
            tie = f" (tied with {r['tied_with']})" if r["tied_with"] else ""
            flag = " unstable" if r["unstable"] else ""
            parts.append(f"{r['tier']}: `{r['backend']}` {_fmt(r['speedup_vs_pytorch'], '.2f')}x{flag}{tie}")
        lines.append(f"- **{threads} thread(s)**, fastest of each tier or better: " + "; ".join(parts))
    return lines


def to_markdown(table: pd.DataFrame, tiers: list[str], skipped: dict[str, dict[str, str]] | None = None) -> str:
    lines = []
    for (model, seq), block in table.groupby(["model", "seq_len"], sort=False):
        runs = ", ".join(f"{t} thread(s): {r}" for t, r in block.groupby("threads")["run_id"].first().items())
        lines.append(f"### {model}, sequence length {seq}, batch {block['batch'].iloc[0]}\n")
        lines.append(f"{block['cpu_model'].iloc[0]}, node {block['node'].iloc[0]}; timing runs: {runs}.")
        lines.append("")
        lines.append(
            "| backend | threads | median ms (round spread) | p90 ms | speed-up vs PyTorch | size MB | tier "
            "| top-1 % [95 % CI] | mean KLD | p99 KLD | Δppl % | GOP/s (share of the limit in its arithmetic) |"
        )
        lines.append("|" + "---|" * 12)
        for _, r in block.iterrows():
            loosest = str(r["tier_missed"]).rpartition(f"{tiers[-1]}: ")[2] if tiers else ""
            tier = r["tier"] if r["tier"] != BROKEN else f"**broken** (misses {tiers[-1]}: {loosest})"
            flag = f" ⚠ unstable: {r['unstable_why']}" if r["unstable"] else ""
            share = (
                f"{_fmt(r['achieved_gops'], '.0f')} ({_fmt(r['limit_share_pct'], '.0f')}% of {r['arithmetic']})"
                if not pd.isna(r["achieved_gops"])
                else "–"
            )
            ci = (
                f" [{_fmt(r['top1_ci95_low'], '.1f')}, {_fmt(r['top1_ci95_high'], '.1f')}]"
                if not pd.isna(r["top1_ci95_low"])
                else ""
            )
            lines.append(
                f"| {r['label']} | {r['threads']} | {_fmt(r['median_ms'], '.1f')} (±{_fmt(r['spread_pct'], '.0f')}%)"
                f"{flag} | {_fmt(r['p90_ms'], '.1f')} | {_fmt(r['speedup_vs_pytorch'], '.2f')}x "
                f"| {_fmt(r['size_mb'], '.1f')} | {tier} | {_fmt(r['top1_pct'], '.2f')}{ci} "
                f"| {_fmt(r['kld_mean'], '.2e')} | {_fmt(r['kld_p99'], '.2e')} | {_fmt(r['ppl_change_pct'], '+.3f')} "
                f"| {share} |"
            )
        lines.append("")
        for backend, why in ((skipped or {}).get(model) or {}).items():
            lines.append(f"- `{backend}`: {why}.")
        lines += recommendation_text(recommendations(block, tiers))
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
    *,
    tiers: list[str],
    max_round_spread_pct: float,
    max_p90_ratio: float,
    skipped: dict[str, dict[str, str]] | None = None,
) -> pd.DataFrame:
    """Write the summary table as CSV and Markdown (with the recommendation per thread count and tier)."""
    table = build_summary(
        timing_csvs,
        accuracy_jsons,
        reference_jsons,
        machine_jsons,
        model_dirs,
        max_round_spread_pct=max_round_spread_pct,
        max_p90_ratio=max_p90_ratio,
    )
    with atomic_output(Path(out_csv)) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_output(Path(out_md)) as tmp:
        tmp.write_text(to_markdown(table, tiers, skipped))
    return table


def accuracy_table(jsons: list[Path], out_csv: Path) -> Path:
    """Gather per-backend accuracy JSONs into one CSV."""
    rows = []
    for path in jsons:
        r = read_json(path)
        row = {k: r.get(k) for k in ACCURACY_COLUMNS}
        row["tier_missed"] = "; ".join(f"{t}: {', '.join(v)}" for t, v in (r.get("tier_missed") or {}).items())
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
            tiers=list(config_default("quality_tiers")),
            max_round_spread_pct=config_default("benchmark", "max_round_spread_pct"),
            max_p90_ratio=config_default("benchmark", "max_p90_ratio"),
        )


def main_accuracy_table(argv: list[str] | None = None) -> None:
    p = parser("accuracy_table", accuracy_table.__doc__)
    p.add_argument("--accuracy", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    accuracy_table(args.accuracy, args.out)


if __name__ == "__main__":
    main()
