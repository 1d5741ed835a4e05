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
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from . import StageError
from .cli import config_default
from .cli import parser as parser_for
from .evalset import load_inputs
from .files import atomic_output, size_bytes
from .host import cpu_flags, cpu_model, limit_threads_env
from .logs import log_to, peak_rss_mb
from .runtimes import open_backend

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


def timing(
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


def main(argv: list[str] | None = None) -> None:
    parser = parser_for("timing", __doc__)
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="model")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=config_default("benchmark", "warmup"))
    parser.add_argument("--repeats", type=int, default=config_default("benchmark", "repeats"))
    parser.add_argument("--min-seconds", type=float, default=config_default("benchmark", "min_seconds"))
    parser.add_argument("--options", default="{}", help="JSON object of runtime options (the backend's)")
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    with log_to(args.log):
        timing(
            args.runtime,
            args.artifact,
            args.inputs,
            args.out,
            model=args.model,
            backend=args.backend or args.runtime,
            precision=args.precision,
            threads=args.threads,
            warmup=args.warmup,
            repeats=args.repeats,
            min_seconds=args.min_seconds,
            options=json.loads(args.options),
        )


if __name__ == "__main__":
    main()
