"""Latency of one backend at one thread count: one CSV row per timed forward pass.

Warm-up runs are not timed. Timed runs continue until both ``repeats`` runs
and ``min_seconds`` of timed work are done. Every backend gets the same
token ids (the first sample of the evaluation set). Each row carries the
settings that produced it: backend, precision, runtime and version, threads,
the threads the runtime reports in effect (``threads_in_effect``, empty where
the runtime cannot tell; the stage fails if it differs from ``threads``),
batch, sequence length, CPU model, load time and the process's peak RSS.
"""

from __future__ import annotations

import csv
import json
import logging
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from . import StageError
from .cli import command
from .evalset import load_inputs
from .files import atomic_output, size_bytes
from .host import cpu_flags, cpu_model, limit_threads_env
from .logs import peak_rss_mb
from .rounds import child_env, child_failure, failed_row, new_run_id, rotated, where_failed, write_rows
from .runtimes import NAMES, open_backend

log = logging.getLogger(__name__)

FIELDS = [
    "model",
    "backend",
    "precision",
    "runtime",
    "runtime_version",
    "threads",
    "threads_in_effect",
    "batch",
    "seq_len",
    "repeat",
    "latency_ms",
    "load_s",
    "peak_rss_mb",
    "artifact_mb",
    "cpu_model",
    "cpu_flags",
    "started_utc",
]


def timed_runs(fn: Callable[[], object], *, warmup: int, repeats: int, min_seconds: float) -> list[float]:
    """Call ``fn`` ``warmup`` times untimed, then until ``repeats`` calls and ``min_seconds`` are done.

    Returns each timed call's latency in milliseconds. The one timing loop of the workflow.
    """
    for _ in range(warmup):
        fn()
    latencies: list[float] = []
    timed_start = time.perf_counter()
    while len(latencies) < repeats or time.perf_counter() - timed_start < min_seconds:
        t = time.perf_counter_ns()
        fn()
        latencies.append((time.perf_counter_ns() - t) / 1e6)
    return latencies


def time_once(
    runtime: str,
    artifact: Path,
    inputs_npz: Path,
    out_csv: Path,
    *,
    model: str,
    backend: str,
    precision: str,
    threads: int,
    warmup: int,
    repeats: int,
    min_seconds: float,
    options: dict | None = None,
) -> Path:
    """Time ``artifact`` in ``runtime``; write one row per timed run to ``out_csv``."""
    if threads < 1 or repeats < 1 or warmup < 0:
        raise StageError(f"threads ({threads}) and repeats ({repeats}) must be >= 1, warmup ({warmup}) >= 0")
    limit_threads_env(threads)
    input_ids, _ = load_inputs(inputs_npz)
    sample = np.ascontiguousarray(input_ids[0])
    started_utc = datetime.now(UTC).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    session = open_backend(runtime, artifact, threads, **(options or {}))
    load_s = time.perf_counter() - t0
    in_effect = session.threads_in_effect
    if in_effect is None:
        log.warning("%s cannot report the threads in effect; asked for %d", session.runtime, threads)
    elif in_effect != threads:
        raise StageError(
            f"{backend}: asked {session.runtime} for {threads} intra-op threads but it runs {in_effect} "
            "(0: the runtime's default); "
            "the timing would be mislabelled"
        )
    latencies = timed_runs(lambda: session.run(sample), warmup=warmup, repeats=repeats, min_seconds=min_seconds)
    rss = round(peak_rss_mb())
    common = {
        "model": model,
        "backend": backend,
        "precision": precision,
        "runtime": session.runtime,
        "runtime_version": session.version,
        "threads": threads,
        "threads_in_effect": "" if in_effect is None else in_effect,
        "batch": sample.shape[0],
        "seq_len": sample.shape[1],
        "load_s": round(load_s, 3),
        "peak_rss_mb": rss,
        "artifact_mb": round(size_bytes(artifact) / 1e6, 1),
        "cpu_model": cpu_model(),
        "cpu_flags": " ".join(cpu_flags()),
        "started_utc": started_utc,
    }
    with atomic_output(Path(out_csv)) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for i, ms in enumerate(latencies):
            writer.writerow({**common, "repeat": i, "latency_ms": round(ms, 3)})
    log.info(
        "%s %s threads=%d: median %.2f ms over %d runs (load %.1f s, peak RSS %d MB)",
        model,
        backend,
        threads,
        float(np.median(latencies)),
        len(latencies),
        load_s,
        rss,
    )
    return Path(out_csv)


#: The command line of one timed child process (the ``timing`` / ``generation`` stage starts it).
main_once = command(
    time_once,
    config={
        "warmup": ("benchmark", "warmup"),
        "repeats": ("benchmark", "repeats"),
        "min_seconds": ("benchmark", "min_seconds"),
    },
    defaults={"model": "model", "precision": "fp32", "threads": 1},
    choices={"runtime": NAMES},
)


def timing(
    backends: list[dict],
    inputs_npz: Path,
    out_csv: Path,
    *,
    model: str,
    threads: int,
    rounds: int,
    warmup: int,
    repeats: int,
    min_seconds: float,
    given_threads: int | None = None,
    timeout_s: float = 1800.0,
    log_path: Path | str | None = None,
) -> Path:
    """Time every backend in ``rounds`` interleaved rounds; one CSV row per timed forward pass.

    ``backends`` holds dicts with ``backend``, ``runtime``, ``precision`` and
    ``artifact`` (its folder, :mod:`lmship.records`). Each (round, backend) runs
    :func:`time_once` in its own Python process with ``threads`` threads.
    ``given_threads`` (the cores the scheduler gave this job) must equal ``threads``:
    never oversubscribe. A backend whose artifact holds a failure record, or whose
    process fails in any round, gets one row with status ``failed`` instead of timings
    (``log_path``: this job's log, where the process's error output goes); the others
    are timed as if it were not there.
    """
    if rounds < 1:
        raise StageError(f"rounds ({rounds}) must be >= 1")
    if given_threads is not None and given_threads != threads:
        raise StageError(
            f"timing at {threads} thread(s) was given {given_threads} core(s) by the scheduler "
            f"(snakemake caps a job's threads at --cores): rerun with --cores {threads} or more, "
            f"or drop {threads} from benchmark.threads; a figure measured on fewer cores would be mislabelled"
        )
    from .records import failure
    from .runtimes import artifact_of

    run_id = new_run_id()
    node = socket.gethostname()
    env = child_env()
    rows: list[dict] = []
    failed: dict[str, dict] = {}
    for b in backends:
        record = failure(b["artifact"])
        if record is not None:
            failed[b["backend"]] = record
            log.warning("%s: not timed, its artifact failed at %s: %s", b["backend"], *where_failed(record))
    with tempfile.TemporaryDirectory(prefix="lmship-rounds-") as tmp:
        for r in range(rounds):
            for b in rotated(backends, r):
                if b["backend"] in failed:
                    continue
                part = Path(tmp) / f"r{r}_{b['backend']}.csv"
                cmd = [
                    sys.executable,
                    "-c",
                    "import sys; from lmship.timing import main_once; main_once(sys.argv[1:])",
                    "--runtime", b["runtime"],
                    "--artifact", str(artifact_of(b["runtime"], b["artifact"])),
                    "--options", json.dumps(b.get("options") or {}),
                    "--inputs-npz", str(inputs_npz),
                    "--out-csv", str(part),
                    "--model", model,
                    "--backend", b["backend"],
                    "--precision", b["precision"],
                    "--threads", str(threads),
                    "--warmup", str(warmup),
                    "--repeats", str(repeats),
                    "--min-seconds", str(min_seconds),
                ]  # fmt: skip
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
                if proc.returncode != 0:
                    what = f"timing {b['backend']} at {threads} thread(s), round {r + 1}/{rounds}"
                    log.error("%s failed (exit %d):\n%s", what, proc.returncode, proc.stderr[-3000:])
                    failed[b["backend"]] = child_failure("timing", proc.stderr, proc.returncode, log_path)
                    rows = [row for row in rows if row["backend"] != b["backend"]]
                    continue
                with open(part, newline="") as f:
                    reader = csv.DictReader(f)
                    part_rows = [{"run_id": run_id, "round": r, "node": node, **row, "status": "ok"} for row in reader]
                rows.extend(part_rows)
                median = float(np.median([float(x["latency_ms"]) for x in part_rows]))
                log.info("round %d/%d %s t%d: median %.2f ms", r + 1, rounds, b["backend"], threads, median)
    for b in backends:
        if b["backend"] in failed:
            rows.append(
                {
                    "run_id": run_id,
                    "round": 0,
                    "node": node,
                    "model": model,
                    "threads": threads,
                    **failed_row(b, failed[b["backend"]]),
                }
            )
    return write_rows(out_csv, rows)


if __name__ == "__main__":
    main_once()
