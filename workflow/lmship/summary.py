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
as ties (:func:`lmship.rounds.fastest`), never a broken or failed one.

Every configured format has a row at every thread count, with its ``status``
(:mod:`lmship.status`): ``ok``; ``failed`` (the stage that failed, its one-line
reason and its log; a format whose accuracy record failed has no figures at
all, one whose timing failed keeps its measured quality); or ``not applicable``
(the reason it was skipped). Nothing divides by a missing figure: a ratio to a
failed reference is missing too.
"""

from __future__ import annotations

import logging
import re
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
from .status import (
    FAILED,
    FAILURE_FIELDS,
    NOT_APPLICABLE,
    OK,
    Footnotes,
    failure_cell,
    failure_text,
    merged,
    one_line,
    settled,
    with_status,
)

log = logging.getLogger(__name__)

COLUMNS = [
    "model",
    "seq_len",
    "batch",
    "backend",
    "label",
    "made_by",
    "status",
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
    "failed_at",
    "reason",
    "log",
]
#: Columns of a row that hold a speed figure (blank when the format's quality could not be measured).
SPEED_COLUMNS = ["runs", "rounds", "median_ms", "p10_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms", "stdev_ms"]
SPEED_COLUMNS += ["spread_pct", "unstable", "unstable_why"]


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
    skipped: dict[str, dict[str, str]] | None = None,
) -> pd.DataFrame:
    """Combine the raw measurements into the summary table (see module docstring).

    ``reference_jsons`` maps (model, sequence length) to the ``reference_logits`` metrics;
    ``skipped`` maps model -> backend -> why it does not apply.
    """
    raw = _timing_rows(timing_csvs)
    accuracy = _accuracy(accuracy_jsons, reference_jsons)
    table = _latency(raw, max_round_spread_pct, max_p90_ratio)
    table = table.merge(accuracy, on=["model", "seq_len", "backend"], how="left")
    table = pd.concat([table, _failed_before_timing(table, accuracy)], ignore_index=True)
    table = _with_status(table)
    _log_failures(table)
    table["label"] = table["backend"].map(_label)
    table = _with_throughput(table, machine_jsons, model_dirs)
    table = _with_ratios_to_reference(table)
    table = pd.concat([table, _not_applicable(table, skipped or {})], ignore_index=True)
    table["made_by"] = table["backend"].map(lambda b: BACKENDS[b].made_by if b in BACKENDS else "")
    for col in COLUMNS:
        if col not in table:
            table[col] = np.nan
    for column in FAILURE_FIELDS:
        table[column] = table[column].fillna("")
    order = {name: i for i, name in enumerate(BACKENDS)}
    table["_order"] = table["backend"].map(lambda b: order.get(b, len(order)))
    table = table.sort_values(["model", "seq_len", "threads", "_order"], kind="stable")
    return table[COLUMNS].reset_index(drop=True)


def _label(backend: str) -> str:
    return BACKENDS[backend].label if backend in BACKENDS else backend


def _timing_rows(timing_csvs: list[Path]) -> pd.DataFrame:
    """Every row of the timing CSVs with its status.

    A failed row carries no sequence length or batch: it takes the sequence length of the
    other rows of its CSV, else the one its path names (``.../seq<seq>/timing/t<threads>.csv``),
    and the batch of the other rows of its model and sequence length.
    """
    frames = []
    for path in timing_csvs:
        rows = pd.read_csv(path)
        for column in ("seq_len", "batch"):
            if column not in rows:
                rows[column] = np.nan
        known = rows["seq_len"].dropna()
        named = re.fullmatch(r"seq(\d+)", Path(path).parent.parent.name)
        seq = known.iloc[0] if len(known) else (int(named.group(1)) if named else np.nan)
        rows["seq_len"] = rows["seq_len"].fillna(seq)
        frames.append(rows)
    raw = with_status(pd.concat(frames, ignore_index=True))
    raw["seq_len"] = raw["seq_len"].astype(int)
    raw["batch"] = raw.groupby(["model", "seq_len"])["batch"].transform(lambda b: b.fillna(b.dropna().min()))
    return raw


def _one_run(raw: pd.DataFrame) -> None:
    """Refuse timings of one model, sequence length and thread count that come from several runs or nodes."""
    for (model, seq, threads), group in raw.groupby(["model", "seq_len", "threads"]):
        for column, what in (("run_id", "runs"), ("node", "nodes"), ("cpu_model", "CPUs")):
            values = sorted(group[column].dropna().astype(str).unique())
            if len(values) > 1:
                raise StageError(
                    f"timings of {model} seq {seq} at {threads} thread(s) come from {len(values)} {what} "
                    f"({', '.join(values)}): a speed-up may only divide figures of one run on one node. "
                    "Delete the timing CSVs under results/<model>/seq<seq>/timing/ and rerun to time all "
                    "backends together."
                )


def _latency(raw: pd.DataFrame, max_round_spread_pct: float, max_p90_ratio: float) -> pd.DataFrame:
    """One row per model, sequence length, batch, backend and threads: percentiles, stability, run.

    A backend with a failed timing row at a thread count is failed there (no figures), even if
    some of its passes were timed.
    """
    failed = _timing_failures(raw)
    ok = raw[raw["status"] == OK]
    failed_keys = set(map(tuple, failed[_KEYS].to_numpy().tolist())) if len(failed) else set()
    keep = pd.Series([tuple(k) not in failed_keys for k in ok[_KEYS].to_numpy().tolist()], index=ok.index, dtype=bool)
    ok = ok[keep]
    _one_run(ok)
    if ok.empty:
        return failed
    groups = ok.groupby(_KEYS, sort=False)
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
    table["timing_status"] = OK
    for _, r in table[table["unstable"]].iterrows():
        log.warning(
            "%s seq %d %s at %d thread(s) is unstable (%s): rerun on a quiet machine",
            r["model"],
            r["seq_len"],
            r["backend"],
            r["threads"],
            r["unstable_why"],
        )
    table = table.rename(columns={"artifact_mb": "size_mb"})
    return pd.concat([table, failed], ignore_index=True) if len(failed) else table


def _timing_failures(raw: pd.DataFrame) -> pd.DataFrame:
    """One row per failed backend and thread count: its run columns and where and why it failed."""
    failed = raw[raw["status"] == FAILED]
    columns = [*_KEYS, *(c for c in _RUN_COLUMNS if c != "artifact_mb"), "node", "run_id", *FAILURE_FIELDS]
    out = failed.groupby(_KEYS, sort=False, dropna=False).first().reset_index()
    out = out.reindex(columns=columns)
    out["timing_status"] = FAILED
    return out.rename(columns={c: f"timing_{c}" for c in FAILURE_FIELDS})


def _accuracy(accuracy_jsons: list[Path], reference_jsons: dict[tuple[str, int], Path]) -> pd.DataFrame:
    """One row per model, sequence length and backend with its status; the reference is exact by definition."""
    rows = [
        {
            "model": model,
            "seq_len": int(seq),
            "backend": REFERENCE,
            "accuracy_status": OK,
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
        row["accuracy_status"] = a.get("status") or OK
        if row["accuracy_status"] == FAILED:
            row["tier"] = FAILED
            row.update({f"accuracy_{k}": one_line(a.get(k, "")) for k in FAILURE_FIELDS})
        else:
            row.update({k: a.get(k) for k in _QUALITY})
            row["tier_missed"] = "; ".join(f"{t}: {', '.join(r)}" for t, r in (a.get("tier_missed") or {}).items())
        rows.append(row)
    columns = ["model", "seq_len", "backend", "accuracy_status", "tier"]
    return pd.DataFrame(rows, columns=None if rows else columns)


def _failed_before_timing(table: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """Rows for backends whose accuracy record failed and that no timing CSV names: one per thread count."""
    failed = accuracy[accuracy["accuracy_status"] == FAILED] if len(accuracy) else accuracy
    timed = set(zip(table["model"], table["seq_len"], table["backend"], strict=True))
    rows = []
    for _, a in failed.iterrows():
        if (a["model"], a["seq_len"], a["backend"]) in timed:
            continue
        block = table[(table["model"] == a["model"]) & (table["seq_len"] == a["seq_len"])]
        for (batch, threads), _ in block.groupby(["batch", "threads"], dropna=False):
            rows.append({**a.to_dict(), "batch": batch, "threads": threads})
    return pd.DataFrame(rows)


def _with_status(table: pd.DataFrame) -> pd.DataFrame:
    """``status`` and the failure columns of every row, from its accuracy and its timing record.

    A failed accuracy record fails the row at every thread count and blanks its speed figures
    (a speed figure always stands next to its measured quality); a failed timing fails the row
    at that thread count and keeps the measured quality. A row without accuracy record (none was
    written) has tier ``not measured``.
    """
    table = table.copy()
    for column in COLUMNS:
        if column not in table:
            table[column] = np.nan
    for column in ("accuracy_status", "timing_status"):
        table[column] = table[column].fillna("") if column in table else ""
    for prefix in ("accuracy", "timing"):
        for k in FAILURE_FIELDS:
            table[f"{prefix}_{k}"] = table[f"{prefix}_{k}"].fillna("") if f"{prefix}_{k}" in table else ""
    accuracy_failed = table["accuracy_status"] == FAILED
    failed = accuracy_failed | (table["timing_status"] == FAILED)
    table["status"] = np.where(failed, FAILED, OK)
    failures = [
        merged(
            {k: r[f"accuracy_{k}"] for k in FAILURE_FIELDS} if r["accuracy_status"] == FAILED else {},
            {k: r[f"timing_{k}"] for k in FAILURE_FIELDS} if r["timing_status"] == FAILED else {},
        )
        for _, r in table.iterrows()
    ]
    for k in FAILURE_FIELDS:
        table[k] = [f[k] for f in failures]
    for column in SPEED_COLUMNS:
        if column in table:
            table[column] = table[column].where(~accuracy_failed)
    table["unstable"] = [False if pd.isna(v) else bool(v) for v in table["unstable"]]
    table["tier"] = table["tier"].fillna("not measured")
    helpers = [c for c in table if c.startswith(("accuracy_", "timing_"))]
    return settled(table.drop(columns=helpers))


def _log_failures(table: pd.DataFrame) -> None:
    """One warning per failed format and failure, naming the thread counts it failed at."""
    failed = table[table["status"] == FAILED]
    for (model, seq, backend, failed_at, reason), group in failed.groupby(
        ["model", "seq_len", "backend", "failed_at", "reason"], sort=False
    ):
        threads = ", ".join(str(t) for t in sorted(group["threads"].unique()))
        log.warning("%s seq %s %s at %s thread(s): %s", model, seq, backend, threads, failure_text(failed_at, reason))


def _not_applicable(table: pd.DataFrame, skipped: dict[str, dict[str, str]]) -> pd.DataFrame:
    """One row per model, sequence length, thread count and backend that does not apply, with the reason."""
    rows = []
    present = set(zip(table["model"], table["backend"], strict=True))
    for (model, seq, batch, threads), _ in table.groupby(["model", "seq_len", "batch", "threads"], dropna=False):
        for backend, why in (skipped.get(model) or {}).items():
            if (model, backend) in present:
                continue
            rows.append(
                {
                    "model": model,
                    "seq_len": seq,
                    "batch": batch,
                    "backend": backend,
                    "label": _label(backend),
                    "status": NOT_APPLICABLE,
                    "tier": NOT_APPLICABLE,
                    "precision": BACKENDS[backend].precision if backend in BACKENDS else "",
                    "threads": threads,
                    "reason": one_line(why),
                    "unstable": False,
                }
            )
    return pd.DataFrame(rows)


def _with_throughput(table: pd.DataFrame, machine_jsons: list[Path], model_dirs: dict[str, Path]) -> pd.DataFrame:
    """Operations per forward, achieved GOP/s and their share of the machine's limit in the backend's arithmetic."""
    limits = {int(m["threads"]): m for m in map(read_json, machine_jsons)}
    ops: dict[tuple, float] = {}
    keys = [(m, None if pd.isna(b) else int(b), int(s)) for m, b, s in zip(table["model"], table["batch"],
            table["seq_len"], strict=True)]  # fmt: skip
    for m, b, s in set(keys):
        known = m in model_dirs and b is not None
        ops[(m, b, s)] = forward_ops_from_folder(model_dirs[m], b, s)["total"] / 1e9 if known else np.nan
    table["gops_per_forward"] = [ops[k] for k in keys]
    table["achieved_gops"] = table["gops_per_forward"] / (table["median_ms"] / 1e3)
    table["arithmetic"] = [BACKENDS[b].arithmetic if b in BACKENDS else "fp32" for b in table["backend"]]
    table["machine_limit_gops"] = [
        limit_of(limits[t], a) if t in limits and limit_of(limits[t], a) else np.nan
        for t, a in zip(table["threads"], table["arithmetic"], strict=True)
    ]
    table["limit_share_pct"] = 100.0 * table["achieved_gops"] / table["machine_limit_gops"]
    return table


def _with_ratios_to_reference(table: pd.DataFrame) -> pd.DataFrame:
    """Speed-up and size reduction against the reference at the same model, sequence length and threads.

    A failed reference gives no ratios (missing, never divided by)."""
    keys = ["model", "seq_len", "threads"]
    ref = table.loc[(table["backend"] == REFERENCE) & (table["status"] == OK), [*keys, "median_ms", "size_mb"]]
    ref = ref.rename(columns={"median_ms": "_ref_ms", "size_mb": "_ref_mb"})
    table = table.merge(ref, on=keys, how="left")
    table["speedup_vs_pytorch"] = table["_ref_ms"] / table["median_ms"]
    table["size_reduction"] = table["_ref_mb"] / table["size_mb"]
    return table.drop(columns=["_ref_ms", "_ref_mb"])


def recommendations(table: pd.DataFrame, tiers: list[str]) -> pd.DataFrame:
    """Per model, sequence length, threads and tier: the fastest format of that tier or better.

    ``tiers`` are the configured tier names, strictest first; the reference
    counts as the strictest. Only formats whose every stage succeeded and whose
    latency was measured compete: a broken, failed, unmeasured or not applicable
    format is never named. The winner and its ties come from
    :func:`lmship.rounds.fastest`: formats the winner does not beat by more than
    their measured spread are tied, the smaller file first, and a format that
    another one of the same tier or better beats on both speed and size is never
    named. A tier with no such format has no row.
    """
    rank = {"reference": 0, **{t: i for i, t in enumerate(tiers)}}
    rows = []
    for (model, seq, threads), block in table.groupby(["model", "seq_len", "threads"], sort=False):
        graded = block[(block["status"] == OK) & block["tier"].isin(list(rank)) & np.isfinite(block["median_ms"])]
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
                    "label": winner["label"],
                    "backend_tier": winner["tier"],
                    "median_ms": winner["median_ms"],
                    "speedup_vs_pytorch": winner["speedup_vs_pytorch"],
                    "size_mb": winner["size_mb"],
                    "kld_mean": winner["kld_mean"],
                    "top1_pct": winner["top1_pct"],
                    "unstable": bool(winner["unstable"]),
                    "tied_with": ", ".join(t["backend"] for t in tied),
                    "tied_labels": ", ".join(t["label"] for t in tied),
                }
            )
    return pd.DataFrame(rows)


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    return format(value, spec)


def _speedup(value) -> str:
    """``1.23x``, or ``–`` when the speed-up is missing (no ``x`` after a missing figure)."""
    text = _fmt(value, ".2f")
    return text if text == "–" else f"{text}x"


def recommendation_text(rec: pd.DataFrame) -> list[str]:
    """One line per thread count: the fastest format of each tier or better, ties named."""
    lines = []
    if rec.empty:
        return lines
    for threads, block in rec.groupby("threads", sort=True):
        parts = []
        for _, r in block.iterrows():
            notes = []
            if r["backend"] == REFERENCE:
                notes.append("the reference: no converted format of this tier or better is faster")
            if r["tied_with"]:
                notes.append(f"tied with {r['tied_with']}")
            flag = " unstable" if r["unstable"] else ""
            note = f" ({'; '.join(notes)})" if notes else ""
            parts.append(f"{r['tier']}: `{r['backend']}` {_speedup(r['speedup_vs_pytorch'])}{flag}{note}")
        lines.append(f"- **{threads} thread(s)**, fastest of each tier or better: " + "; ".join(parts))
    return lines


def _table_row(r: pd.Series, tiers: list[str], notes: Footnotes) -> str:
    loosest = str(r["tier_missed"]).rpartition(f"{tiers[-1]}: ")[2] if tiers else ""
    tier = r["tier"] if r["tier"] != BROKEN else f"**broken** (misses {tiers[-1]}: {loosest})"
    tier = "**failed**" if r["tier"] == FAILED else tier
    if r["status"] == FAILED:
        latency = failure_cell(r["failed_at"], r["reason"], r["log"], notes)
    else:
        flag = f" ⚠ unstable: {r['unstable_why']}" if r["unstable"] else ""
        latency = f"{_fmt(r['median_ms'], '.1f')} (±{_fmt(r['spread_pct'], '.0f')}%){flag}"
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
    return (
        f"| {r['label']} | {r['threads']} | {latency} | {_fmt(r['p90_ms'], '.1f')} "
        f"| {_speedup(r['speedup_vs_pytorch'])} | {_fmt(r['size_mb'], '.1f')} | {tier} "
        f"| {_fmt(r['top1_pct'], '.2f')}{ci} | {_fmt(r['kld_mean'], '.2e')} | {_fmt(r['kld_p99'], '.2e')} "
        f"| {_fmt(r['ppl_change_pct'], '+.3f')} | {share} |"
    )


def _first(values: pd.Series) -> object:
    """The first value that is not missing ('–' when there is none)."""
    present = values.dropna()
    return present.iloc[0] if len(present) else "–"


def to_markdown(table: pd.DataFrame, tiers: list[str]) -> str:
    """The summary as Markdown: one table per model and sequence length, the formats that do not apply
    and the recommendation below it, the logs of failed stages as footnotes."""
    lines = []
    notes = Footnotes()
    for (model, seq), block in table.groupby(["model", "seq_len"], sort=False):
        measured = block[block["status"] != NOT_APPLICABLE]
        runs = ", ".join(f"{t} thread(s): {r}" for t, r in measured.groupby("threads")["run_id"].first().items())
        batch = _first(block["batch"])
        lines.append(f"### {model}, sequence length {seq}, batch {batch if batch == '–' else int(batch)}\n")
        lines.append(f"{_first(block['cpu_model'])}, node {_first(block['node'])}; timing runs: {runs or '–'}.")
        lines.append("")
        lines.append(
            "| backend | threads | median ms (round spread) | p90 ms | speed-up vs PyTorch | size MB | tier "
            "| top-1 % [95 % CI] | mean KLD | p99 KLD | Δppl % | GOP/s (share of the limit in its arithmetic) |"
        )
        lines.append("|" + "---|" * 12)
        lines += [_table_row(r, tiers, notes) for _, r in measured.iterrows()]
        lines.append("")
        skipped = block[block["status"] == NOT_APPLICABLE].drop_duplicates("backend")
        lines += [f"- `{r['backend']}`: {r['reason']}." for _, r in skipped.iterrows()]
        lines += recommendation_text(recommendations(block, tiers))
        lines.append("")
    if notes.texts:
        lines += ["Logs of the failed stages:", "", *notes.lines(), ""]
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
        skipped=skipped,
    )
    with atomic_output(Path(out_csv)) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    with atomic_output(Path(out_md)) as tmp:
        tmp.write_text(to_markdown(table, tiers))
    return table


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


if __name__ == "__main__":
    main()
