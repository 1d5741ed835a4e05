"""The harness of interleaved rounds (the ``timing`` and ``generation`` stages), and what the rounds
say about the machine's noise.

A timing job (:func:`lmship.timing.timing`) measures every configured backend at one thread count: in each
round every backend runs once, one after another, each in a fresh process
(so one backend's memory and thread pools never touch the next), and the order
rotates from round to round. A slow phase of the machine then hits all
backends alike, and every ratio in the summary divides numbers of one run.
Each row carries the run id, the round, the host and the CPU.

:func:`stability` flags a figure whose rounds disagree, or whose tail is long;
:func:`fastest` names the winner only when it beats the runner-up by more than
their measured spread, and otherwise reports a tie; it never names a format that
another candidate beats on both speed and file size.
"""

from __future__ import annotations

import csv
import logging
import os
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .files import atomic_output
from .host import transparent_huge_pages, with_huge_pages

log = logging.getLogger(__name__)

#: Columns added to each timing row by the round that produced it.
ROUND_FIELDS = ["run_id", "round", "node"]
#: Columns that say whether a backend was measured: ``ok``, or ``failed`` at which stage, why, and where its log is.
STATUS_FIELDS = ["status", "failed_at", "reason", "log"]


def failed_row(backend: dict, record: dict, **fields) -> dict:
    """The one row of a backend that has no measurement: its artifact failed, or so did its run."""
    return {
        "backend": backend["backend"],
        "runtime": backend["runtime"],
        "precision": backend["precision"],
        **fields,
        "status": "failed",
        **{k: record.get(k) or "" for k in ("failed_at", "reason", "log")},
    }


def child_failure(stage: str, stderr: str, returncode: int, log_path: Path | str | None) -> dict:
    """The failure record of a backend's process that exited with ``returncode``: the last line of its
    error output (a traceback's last line names the exception and its message)."""
    from .records import one_line

    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {returncode}"
    last = last.removeprefix("lmship.StageError: ")
    if returncode < 0:
        last = f"killed by signal {-returncode} ({last})"
    return {"failed_at": stage, "reason": one_line(last), "log": str(log_path) if log_path else ""}


def new_run_id() -> str:
    """A run id: UTC time, host and a random suffix (unique across machines and reruns)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def child_env() -> dict[str, str]:
    """The environment of every backend's timing process: this package importable, and the same memory
    policy for all of them (:func:`lmship.host.with_huge_pages`)."""
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    env = with_huge_pages(env)
    log.info("transparent huge pages: %s; every backend runs with GLIBC_TUNABLES=%s", transparent_huge_pages(),
             env["GLIBC_TUNABLES"])  # fmt: skip
    return env


def rotated(items: list, k: int) -> list:
    """``items`` rotated left by ``k``: round ``k`` starts with a different backend."""
    if not items:
        return []
    k %= len(items)
    return items[k:] + items[:k]


def write_rows(out_csv: Path, rows: list[dict]) -> Path:
    """Write ``rows`` as CSV: the round columns first, the status columns last, every other column
    in the order the rows bring it; a row without a column leaves it empty."""
    middle = [k for row in rows for k in row if k not in ROUND_FIELDS and k not in STATUS_FIELDS]
    fields = [*ROUND_FIELDS, *dict.fromkeys(middle), *STATUS_FIELDS]
    with atomic_output(Path(out_csv)) as tmp_csv, open(tmp_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return Path(out_csv)


def where_failed(record: dict) -> tuple[str, str]:
    """(stage, reason) of a failure record, for a log line."""
    return record.get("failed_at", "?"), record.get("reason", "")


def stability(latency_ms: np.ndarray, rounds: np.ndarray, *, max_round_spread_pct: float, max_p90_ratio: float) -> dict:
    """The median over all runs, the spread between the rounds' medians, and whether to trust it.

    ``spread_pct`` is (slowest round median - fastest round median) / overall
    median, in percent. A figure is ``unstable`` when that spread exceeds
    ``max_round_spread_pct`` or p90 / median exceeds ``max_p90_ratio``.
    """
    latency_ms = np.asarray(latency_ms, dtype=float)
    rounds = np.asarray(rounds)
    median = float(np.median(latency_ms))
    per_round = [float(np.median(latency_ms[rounds == r])) for r in np.unique(rounds)]
    spread = 100.0 * (max(per_round) - min(per_round)) / median if len(per_round) > 1 else 0.0
    p90_ratio = float(np.percentile(latency_ms, 90)) / median
    reasons = []
    if spread > max_round_spread_pct:
        reasons.append(f"rounds differ by {spread:.0f}% (> {max_round_spread_pct:g}%)")
    if p90_ratio > max_p90_ratio:
        reasons.append(f"p90 is {p90_ratio:.2f}x the median (> {max_p90_ratio:g}x)")
    return {
        "median_ms": median,
        "rounds": len(per_round),
        "round_medians_ms": per_round,
        "spread_pct": spread,
        "p90_over_median": p90_ratio,
        "unstable": bool(reasons),
        "unstable_why": "; ".join(reasons),
    }


def fastest(candidates: list[dict]) -> tuple[dict, list[dict]]:
    """The candidate to name and the ones tied with it.

    Each candidate has ``median_ms``, ``spread_pct`` (how far its rounds' medians
    lie apart, in percent of its median) and ``size_mb``.

    1. The tie. The fastest median leads; a candidate is tied with the leader when
       the gap between their medians is not larger than the larger of their two
       spreads. A tie is an interval of medians: every candidate at least as fast
       as a tied one is tied as well (a noisy figure that cannot be told from the
       leader cannot be told from a figure measured between the two either).
    2. Dominance. A candidate that another candidate beats on both speed and size
       (a median no slower and a file no larger, one of the two strictly) is never
       named, neither as the winner nor as tied. Whoever dominates a tied candidate
       is at least as fast, so it is in the tie itself: the winner is never beaten
       on both counts by anyone.
    3. Among the tied candidates left, the smaller file is named first (then the
       faster median).

    A missing spread counts as none; a missing size is last among ties and
    neither beats nor is beaten on size. Returns (winner, others tied with it).
    """
    if not candidates:
        raise ValueError("no candidates")
    by_speed = sorted(candidates, key=lambda c: c["median_ms"])
    best = by_speed[0]
    slowest_tied = best["median_ms"]
    for c in by_speed[1:]:
        gap_pct = 100.0 * (c["median_ms"] - best["median_ms"]) / best["median_ms"]
        if gap_pct <= max(_spread(best), _spread(c)):
            slowest_tied = c["median_ms"]
    tied = [c for c in by_speed if c["median_ms"] <= slowest_tied]
    kept = [c for c in tied if not any(_dominates(o, c) for o in candidates if o is not c)]
    kept.sort(key=lambda c: (not _finite(c["size_mb"]), c["size_mb"] if _finite(c["size_mb"]) else 0.0, c["median_ms"]))
    return kept[0], kept[1:]


def _finite(value) -> bool:
    return value is not None and bool(np.isfinite(value))


def _spread(candidate: dict) -> float:
    spread = candidate.get("spread_pct")
    return float(spread) if _finite(spread) else 0.0


def _dominates(a: dict, b: dict) -> bool:
    """Whether ``a`` beats ``b`` on both speed and size: no slower, no larger, and strictly better in one."""
    if not (_finite(a["size_mb"]) and _finite(b["size_mb"])):
        return False
    no_worse = a["median_ms"] <= b["median_ms"] and a["size_mb"] <= b["size_mb"]
    return no_worse and (a["median_ms"] < b["median_ms"] or a["size_mb"] < b["size_mb"])
