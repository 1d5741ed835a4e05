"""Synthetic inputs of the report stages, written as the timing, evaluate and generation stages write them.

Timing rows: one per timed pass, the round columns and ``timing.FIELDS`` plus the status
columns; a failed backend is one row with status ``failed`` and no latency. Accuracy JSONs:
the figures with ``"status": "ok"``, or the failure record. Generation rows likewise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lmship.files import write_json
from lmship.generation_bench import FIELDS as GENERATION_FIELDS
from lmship.generation_bench import SAME_TEXT_FIELDS
from lmship.rounds import ROUND_FIELDS
from lmship.timing import FIELDS as TIMING_FIELDS

STATUS_FIELDS = ["status", "failed_at", "reason", "log"]
TIERS = ["lossless", "8-bit", "4-bit"]
TIER_LIMITS = {
    "lossless": {"min_top1_pct": 99.5, "max_mean_kld": 0.0005, "max_ppl_change_pct": 0.1},
    "8-bit": {"min_top1_pct": 97.0, "max_mean_kld": 0.005, "max_ppl_change_pct": 0.5},
    "4-bit": {"min_top1_pct": 90.0, "max_mean_kld": 0.05, "max_ppl_change_pct": 5.0},
}
OOM = "killed for memory (SIGKILL) at 15012 MB peak RSS, declared mem_mb 10000"


@dataclass(frozen=True)
class Timed:
    """A backend's timing at one thread count: median, spread of its rounds' medians (%), file size."""

    median_ms: float
    spread_pct: float = 1.0
    size_mb: float = 100.0


@dataclass(frozen=True)
class Failure:
    failed_at: str
    reason: str

    def log(self, model: str, backend: str) -> str:
        return f"logs/{self.failed_at}/{model}_{backend}.log"


def write_timing(
    path: Path,
    backends: dict[str, Timed | Failure],
    *,
    model: str = "m",
    seq: int = 16,
    threads: int = 1,
    run_id: str = "run-a",
    node: str = "n1",
    rounds: int = 3,
    repeats: int = 3,
) -> Path:
    """One timing CSV: every ``Timed`` backend in every round (round medians spread by its spread_pct), every
    ``Failure`` as one failed row."""
    rows = []
    base = {"run_id": run_id, "node": node, "model": model, "threads": threads, "batch": 1, "seq_len": seq}
    base |= {"runtime_version": "1", "threads_in_effect": threads, "load_s": 0.1, "peak_rss_mb": 1.0}
    base |= {"cpu_model": "Test CPU", "cpu_flags": "avx2", "started_utc": "2025-01-01T00:00:00Z"}
    for backend, t in backends.items():
        if isinstance(t, Failure):
            rows.append(
                base
                | {"backend": backend, "precision": "fp32", "runtime": "x", "round": None, "repeat": None}
                | {"latency_ms": None, "artifact_mb": None, "status": "failed", "failed_at": t.failed_at}
                | {"reason": t.reason, "log": t.log(model, backend)}
            )
            continue
        factors = (
            [1.0 + t.spread_pct / 200.0 * (2 * r / (rounds - 1) - 1) for r in range(rounds)] if rounds > 1 else [1]
        )
        for r, factor in enumerate(factors):
            for i in range(repeats):
                rows.append(
                    base
                    | {"backend": backend, "precision": "fp32", "runtime": "x", "round": r, "repeat": i}
                    | {"latency_ms": t.median_ms * factor, "artifact_mb": t.size_mb, "status": "ok"}
                    | {"failed_at": "", "reason": "", "log": ""}
                )
    columns = [*ROUND_FIELDS, *TIMING_FIELDS, *STATUS_FIELDS]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def write_accuracy(
    folder: Path,
    backend: str,
    quality: tuple[str, float, float] | Failure,
    *,
    model: str = "m",
    seq: int = 16,
) -> Path:
    """An accuracy JSON: ``quality`` = (tier, mean KLD, top-1 %) with status ok, or a failure record."""
    record = {"model": model, "seq_len": seq, "backend": backend, "precision": "fp32"}
    if isinstance(quality, Failure):
        record |= {"status": "failed", "failed_at": quality.failed_at, "reason": quality.reason, "tier": "failed"}
        record["log"] = quality.log(model, backend)
    else:
        tier, kld, top1 = quality
        record |= {"status": "ok", "tier": tier, "kld_mean": kld, "kld_p99": kld * 10, "kld_max": kld * 50}
        record |= {"top1_pct": top1, "top1_ci95_low": max(top1 - 0.5, 0.0), "top1_ci95_high": min(top1 + 0.2, 100)}
        record |= {"perplexity": 10.0, "ppl_change_pct": 0.01, "top1_agreement_pct": top1, "max_abs_diff": 0.1}
        record["tier_missed"] = {} if tier == "lossless" else {"lossless": [f"mean KLD {kld:.2e} > 0.0005"]}
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(folder / f"{model}_{seq}_{backend}.json", record)


def write_reference(folder: Path, *, model: str = "m") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(folder / f"{model}_reference.json", {"perplexity_text": 10.0})


@dataclass(frozen=True)
class Generated:
    """A backend's generation at one thread count: ms per decoded token, time to first token, same text."""

    decode_ms: float
    ttft_ms: float = 100.0
    identical: bool = True


def write_generation(
    path: Path,
    backends: dict[str, Generated | Failure],
    *,
    model: str = "m",
    threads: int = 1,
    prompts: int = 2,
    rounds: int = 2,
    new_tokens: int = 4,
) -> Path:
    """One generation CSV: a row per generated sequence and round; a ``Failure`` as one failed row."""
    rows = []
    base = {"run_id": "gen-a", "node": "n1", "model": model, "threads": threads, "precision": "fp32"}
    for backend, g in backends.items():
        runtime = "pytorch" if backend.startswith("pytorch") else "ort"
        if isinstance(g, Failure):
            rows.append(
                base
                | {"backend": backend, "runtime": runtime, "status": "failed", "failed_at": g.failed_at}
                | {"reason": g.reason, "log": g.log(model, backend)}
            )
            continue
        for r in range(rounds):
            for k in range(prompts):
                tokens = " ".join(str(10 + i) for i in range(new_tokens))
                rows.append(
                    base
                    | {"backend": backend, "runtime": runtime, "round": r, "prompt": k, "prompt_tokens": 8}
                    | {"new_tokens": new_tokens, "prompt_via": "prefill graph", "ttft_ms": g.ttft_ms}
                    | {"decode_ms_median": g.decode_ms * (1 + 0.002 * r), "decode_ms_p90": g.decode_ms * 1.05}
                    | {"prompt_tok_s": 8 / (g.ttft_ms / 1000), "generated_tok_s": 1000 / g.decode_ms}
                    | {"load_s": 0.2, "peak_rss_mb": 50.0, "tokens": tokens, "identical": g.identical}
                    | {"first_divergence": "" if g.identical else "2", "matched_pct": 100.0 if g.identical else 50.0}
                    | {"status": "ok", "failed_at": "", "reason": "", "log": ""}
                )
    columns = [*ROUND_FIELDS, *GENERATION_FIELDS, *SAME_TEXT_FIELDS, *STATUS_FIELDS]
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path
