"""The generation benchmark: every backend generates the same text, timed in interleaved rounds.

:func:`generate_once` runs one backend in this process: greedy ``new_tokens``
from each prompt (the first prose windows of the evaluation set), one CSV row
per generated sequence with time to first token, decode latency per token
(median and p90), prompt and generated tokens/s, load time, peak RSS and the
token ids. PyTorch eager with its own KV cache (transformers) is the reference;
ONNX Runtime and TFLite run the prefill and decode graphs with the host's cache.

:func:`generation` runs every backend at one thread count in the
discipline of :func:`lmship.timing.timing`: each backend in a fresh
process per round, the order rotating, rows tagged with run id, round and host.
It then compares each sequence with PyTorch's (:func:`lmship.generate.same_text`):
a backend of the lossless tier that computes with PyTorch's own weights (fp32, the
exact 4-bit grid) and does not generate exactly PyTorch's tokens fails the stage;
the others report the first divergence and the share matched.
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
from pathlib import Path

import numpy as np

from . import StageError
from .cli import command
from .files import atomic_output, read_json
from .host import limit_threads_env
from .logs import peak_rss_mb
from .rounds import child_env, child_failure, failed_row, new_run_id, rotated, where_failed, write_rows
from .runtimes import NAMES

log = logging.getLogger(__name__)

FIELDS = [
    "model",
    "backend",
    "runtime",
    "precision",
    "threads",
    "prompt",
    "prompt_tokens",
    "new_tokens",
    "prompt_via",
    "ttft_ms",
    "decode_ms_median",
    "decode_ms_p90",
    "prompt_tok_s",
    "generated_tok_s",
    "load_s",
    "peak_rss_mb",
    "tokens",
]


def generate_once(
    runtime: str,
    decode: Path,
    prefill: Path | None,
    host_npz: Path | None,
    inputs_npz: Path,
    out_csv: Path,
    *,
    model: str,
    backend: str,
    precision: str,
    threads: int,
    prompts: int,
    new_tokens: int,
    max_len: int,
    options: dict | None = None,
) -> Path:
    """Greedy generation of ``backend`` from ``prompts`` prompts; one CSV row per sequence.

    A runtime with its own cache and loop (:mod:`lmship.runtimes`: PyTorch, the peers) generates
    from its artifact folder ``decode``; one that runs graphs runs the prefill and decode graphs
    with the host tables ``host_npz`` (``prefill`` None: the prompt goes through decode steps).
    ``options``: the runtime's (an OpenVINO precision hint).
    """
    limit_threads_env(threads)
    from .generate import generate, graph_prompts
    from .runtimes import artifact_of, generation_kind, get

    cut = graph_prompts(inputs_npz, prompts)
    started = time.perf_counter()
    if generation_kind(runtime) == "own":
        result = get(runtime).generate(artifact_of(runtime, decode), cut, new_tokens, max_len, threads=threads)
        via = f"prefill ({runtime}'s own loop)"
    else:
        graph = artifact_of(runtime, decode)
        first = artifact_of(runtime, prefill) if prefill is not None else None
        result = generate(
            runtime, first, graph, host_npz, cut, new_tokens=new_tokens, threads=threads, **(options or {})
        )
        via = "prefill graph" if prefill is not None else "decode steps"
    log.info("%s: %d prompts in %.1f s", backend, len(cut), time.perf_counter() - started)
    rss = round(peak_rss_mb(), 1)
    rows = []
    for k, (tokens, ttft, steps, n) in enumerate(
        zip(result.tokens, result.ttft_ms, result.decode_ms, result.prompt_lens, strict=True)
    ):
        steps = np.asarray(steps, dtype=np.float64)
        median = float(np.median(steps)) if steps.size else float("nan")
        rows.append(
            {
                "model": model,
                "backend": backend,
                "runtime": runtime,
                "precision": precision,
                "threads": threads,
                "prompt": k,
                "prompt_tokens": n,
                "new_tokens": len(tokens),
                "prompt_via": via,
                "ttft_ms": round(ttft, 3),
                "decode_ms_median": round(median, 3),
                "decode_ms_p90": round(float(np.percentile(steps, 90)), 3) if steps.size else float("nan"),
                "prompt_tok_s": round(n / (ttft / 1000.0), 2),
                "generated_tok_s": round(steps.size / (steps.sum() / 1000.0), 2) if steps.size else float("nan"),
                "load_s": round(result.load_s, 3),
                "peak_rss_mb": rss,
                "tokens": " ".join(str(int(t)) for t in tokens),
            }
        )
    with atomic_output(Path(out_csv)) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return Path(out_csv)


def exact_weights(backend: str) -> bool:
    """Whether ``backend`` computes with PyTorch's own weight values: fp32, or the exact 4-bit grid
    (whose stage proves every weight bit for bit). fp16 or int8 weights are rounded, so their text
    may part from PyTorch's after a near-tie even when their tier is lossless."""
    from .backends import BACKENDS

    b = BACKENDS[backend]
    return b.precision == "fp32" or b.wildcards.get("variant") == "q4_exact"


def lossless_backends(accuracy_jsons: list[Path], tier: str) -> list[str]:
    """The backends that must generate PyTorch's exact tokens: in ``tier`` (the strictest) with exact weights."""
    return [
        j["backend"]
        for j in (read_json(p) for p in accuracy_jsons)
        if j.get("tier") == tier and exact_weights(j["backend"])
    ]


def same_text_columns(rows: list[dict], reference: str) -> dict[str, list[str]]:
    """Add ``identical``, ``first_divergence``, ``matched_pct`` to every row; return mismatches per backend.

    PyTorch's tokens of the first round are the reference of each prompt; PyTorch
    must repeat them exactly in every round.
    """
    from .generate import same_text

    ref_rows = [r for r in rows if r["backend"] == reference]
    if not ref_rows:
        raise StageError(f"no {reference} rows: the reference generation is missing")
    first_round = min(int(r["round"]) for r in ref_rows)
    expected = {r["prompt"]: r["tokens"].split() for r in ref_rows if int(r["round"]) == first_round}
    differs: dict[str, list[str]] = {}
    for row in rows:
        if row["prompt"] not in expected:
            raise StageError(f"{row['backend']} generated from prompt {row['prompt']}, which PyTorch did not")
        check = same_text(expected[row["prompt"]], row["tokens"].split())
        row["identical"] = check["identical"]
        row["first_divergence"] = "" if check["first_divergence"] is None else check["first_divergence"]
        row["matched_pct"] = check["matched_pct"]
        if not check["identical"]:
            differs.setdefault(row["backend"], []).append(
                f"prompt {row['prompt']} round {row['round']}: first divergence at token "
                f"{check['first_divergence']}, {check['matched_pct']:.1f}% matched"
            )
    if reference in differs:
        raise StageError(
            f"PyTorch's own greedy tokens differ between rounds ({'; '.join(differs[reference][:3])}): "
            "the reference is not deterministic on this machine"
        )
    return differs


def generation(
    backends: list[dict],
    host_npz: Path | None,
    inputs_npz: Path,
    out_csv: Path,
    *,
    model: str,
    threads: int,
    rounds: int,
    prompts: int,
    new_tokens: int,
    max_len: int,
    lossless: list[str],
    reference: str = "pytorch",
    given_threads: int | None = None,
    timeout_s: float = 3600.0,
    log_path: Path | str | None = None,
) -> Path:
    """Generate with every backend in ``rounds`` interleaved rounds; one CSV row per sequence.

    ``backends`` holds dicts with ``backend``, ``runtime``, ``precision``, ``options``,
    ``decode`` and ``prefill`` (their artifact folders, :mod:`lmship.records`; None:
    prompt through decode steps; both the same folder for a runtime with its own loop).
    A backend named in ``lossless`` must generate exactly PyTorch's tokens, or it becomes
    a failed row; so does a backend whose graph holds a failure record or whose process
    fails (``log_path``: this job's log). Only the reference failing fails the stage.
    """
    if rounds < 1:
        raise StageError(f"rounds ({rounds}) must be >= 1")
    if given_threads is not None and given_threads != threads:
        raise StageError(
            f"generation at {threads} thread(s) was given {given_threads} core(s) by the scheduler: "
            f"rerun with --cores {threads} or more, or drop {threads} from benchmark.threads"
        )
    if reference not in [b["backend"] for b in backends]:
        raise StageError(f"the generation backends {[b['backend'] for b in backends]} lack the reference {reference}")
    from .records import first_failure
    from .runtimes import generation_kind

    run_id, node = new_run_id(), socket.gethostname()
    env = child_env()
    rows: list[dict] = []
    failed: dict[str, dict] = {}
    for b in backends:
        record = first_failure([p for p in (b.get("prefill"), b["decode"]) if p])
        if record is not None:
            failed[b["backend"]] = record
            log.warning("%s: does not generate, its graph failed at %s: %s", b["backend"], *where_failed(record))
    if reference in failed:
        raise StageError(f"the reference {reference} cannot generate: {failed[reference]}")
    with tempfile.TemporaryDirectory(prefix="lmship-generation-") as tmp:
        for r in range(rounds):
            for b in rotated(backends, r):
                if b["backend"] in failed:
                    continue
                part = Path(tmp) / f"r{r}_{b['backend']}.csv"
                own = generation_kind(b["runtime"]) == "own"
                cmd = [
                    sys.executable, "-c",
                    "import sys; from lmship.generation import main_once; main_once(sys.argv[1:])",
                    "--runtime", b["runtime"], "--decode", str(b["decode"]),
                    *(["--prefill", str(b["prefill"])] if b.get("prefill") and not own else []),
                    *(["--host-npz", str(host_npz)] if host_npz else []),
                    "--options", json.dumps(b.get("options") or {}), "--max-len", str(max_len),
                    "--inputs-npz", str(inputs_npz), "--out-csv", str(part),
                    "--model", model, "--backend", b["backend"], "--precision", b["precision"],
                    "--threads", str(threads), "--prompts", str(prompts), "--new-tokens", str(new_tokens),
                ]  # fmt: skip
                proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
                if proc.returncode != 0:
                    what = f"generation with {b['backend']} at {threads} thread(s), round {r + 1}/{rounds}"
                    if b["backend"] == reference:
                        raise StageError(f"{what} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
                    log.error("%s failed (exit %d):\n%s", what, proc.returncode, proc.stderr[-3000:])
                    failed[b["backend"]] = child_failure("generation", proc.stderr, proc.returncode, log_path)
                    rows = [row for row in rows if row["backend"] != b["backend"]]
                    continue
                with open(part, newline="") as f:
                    part_rows = [
                        {"run_id": run_id, "round": r, "node": node, **row, "status": "ok"} for row in csv.DictReader(f)
                    ]
                rows.extend(part_rows)
                log.info(
                    "round %d/%d %s t%d: decode %s ms/token, TTFT %s ms",
                    r + 1,
                    rounds,
                    b["backend"],
                    threads,
                    part_rows[0]["decode_ms_median"],
                    part_rows[0]["ttft_ms"],
                )
    differs = same_text_columns(rows, reference)
    for backend, where in differs.items():
        log.info("%s does not generate PyTorch's text: %s", backend, "; ".join(where[:4]))
        if backend in lossless:
            log.error(
                "%s is of the lossless tier and computes with PyTorch's own weights, yet its text differs: "
                "a failed conversion",
                backend,
            )
            reason = f"text differs from PyTorch's: {where[0]}"
            failed[backend] = {"failed_at": "generation", "reason": reason, "log": str(log_path or "")}
            rows = [row for row in rows if row["backend"] != backend]
    for b in backends:
        if b["backend"] in failed:
            extra = {"model": model, "threads": threads}
            rows.append({"run_id": run_id, "round": 0, "node": node, **extra, **failed_row(b, failed[b["backend"]])})
    return write_rows(out_csv, rows)


#: The command line of one timed child process (the ``timing`` / ``generation`` stage starts it).
main_once = command(
    generate_once, defaults={"model": "model", "precision": "fp32", "threads": 1}, choices={"runtime": NAMES}
)


#: ``python -m lmship generation``: its options are the function's parameters.
main = command(
    generation,
    config={
        "rounds": ("benchmark", "rounds"),
        "prompts": ("generation", "prompts"),
        "new_tokens": ("generation", "new_tokens"),
        "max_len": ("generation", "max_len"),
    },
    defaults={"model": "model", "threads": 1, "lossless": []},
)


if __name__ == "__main__":
    main()
