"""Run a backend on the evaluation set and compare it with the PyTorch reference.

:func:`compare_with_reference` is the one place that does this: the
conversion gates (:mod:`lmship.validate`), the SavedModel stage and the
``evaluate`` stage all call it, so a new metric is added here once. It streams
the evaluation set one sample at a time (the reference logits are memory-mapped)
through :class:`lmship.quality.Agreement`: KL divergence to PyTorch (mean, p99,
max, nats), top-1 agreement with its 95 % interval and perplexity, on the prose
positions; the random-id samples are reported apart. The ``evaluate`` stage
places the backend in the first quality tier (config ``quality_tiers``) whose
limits it meets, or ``broken``; a broken backend is never recommended.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import ThreadsRefusedError
from .cli import command
from .evalset import load_inputs
from .files import stage_metrics, write_json
from .quality import BROKEN, Agreement, tier
from .runtimes import NAMES, open_backend

log = logging.getLogger(__name__)

Run = Callable[[np.ndarray], np.ndarray]


def compare_with_reference(run: Run, inputs_npz: Path, reference_npy: Path) -> dict:
    """Run ``run`` on every evaluation sample and compare its logits with the reference logits.

    One sample at a time, so memory stays at one sample's logits whatever the
    size of the evaluation set. Returns :meth:`Agreement.summarise`'s figures
    plus ``top1_agreement_pct`` over all positions (the conversion gates' measure).
    """
    input_ids, is_text = load_inputs(inputs_npz)
    reference = np.load(reference_npy, mmap_mode="r")
    if reference.shape[0] != input_ids.shape[0]:
        raise ValueError(f"{reference_npy} has {reference.shape[0]} samples, the evaluation set {input_ids.shape[0]}")
    agreement = Agreement()
    for i, sample in enumerate(input_ids):
        agreement.add(np.asarray(reference[i]), run(sample), sample, bool(is_text[i]))
    metrics = agreement.summarise()
    metrics["samples"] = int(input_ids.shape[0])
    metrics["text_samples"] = int(np.sum(is_text))
    return metrics


def measured_by(session, inputs_npz: Path, reference_npy: Path) -> dict:
    """Which runtime measured a set of figures, and on which evaluation set."""
    return {
        "runtime": session.runtime,
        "runtime_version": session.version,
        "threads": session.threads_in_effect,
        "inputs": _fingerprint(inputs_npz),
        "reference": _fingerprint(reference_npy),
    }


def _fingerprint(path: Path) -> dict:
    st = Path(path).stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def gate_figures(
    stage_json: Path | None, session, artifact: Path, inputs_npz: Path, reference_npy: Path
) -> dict | None:
    """The figures the conversion stage that wrote ``artifact`` measured on it (``vs_pytorch`` of its
    metrics JSON ``stage_json``), if the same runtime and version measured them on the same evaluation
    set and the artifact is unchanged since; else None (the caller measures)."""
    if stage_json is None or not Path(stage_json).is_file():
        return None
    stage = json.loads(Path(stage_json).read_text())
    figures = stage.get("vs_pytorch") or {}
    here = measured_by(session, inputs_npz, reference_npy)
    identity = ("runtime", "runtime_version", "inputs", "reference")
    if any(figures.get(k) != here[k] for k in identity) or "kld_mean" not in figures:
        return None
    if Path(stage_json).resolve().parent != Path(artifact).resolve().parent:
        return None  # not the stage that wrote this artifact folder
    if Path(stage_json).stat().st_mtime_ns < Path(artifact).stat().st_mtime_ns - 10**9:
        return None  # the artifact was rewritten after its stage measured it
    return {k: v for k, v in figures.items() if k not in identity}


def evaluate(
    runtime: str,
    artifact: Path,
    inputs_npz: Path,
    reference_npy: Path,
    out_json: Path,
    *,
    model: str,
    backend: str,
    precision: str,
    tiers: dict[str, dict],
    threads: int = 0,
    stage_json: Path | None = None,
    options: dict | None = None,
) -> dict:
    """Run ``artifact`` on the evaluation set with ``threads`` (0: the runtime's default); write its
    quality figures and tier to ``out_json``.

    ``stage_json``: the metrics JSON of the stage that wrote ``artifact``. When that stage's gate
    already ran the whole evaluation set through the same runtime (:func:`gate_figures`), its
    figures are taken, not measured again; ``measured_in`` says which. ``options``: what the runtime
    opens the artifact with (the backend's, e.g. a bf16 precision hint).
    """
    started = time.monotonic()
    try:
        session = open_backend(runtime, artifact, threads=threads, **(options or {}))
        threads_note = None
    except ThreadsRefusedError as refused:  # quality does not depend on the thread count: measure it where it runs
        log.warning("%s; evaluated at %d threads instead", refused, refused.min_threads)
        session = open_backend(runtime, artifact, threads=refused.min_threads, **(options or {}))
        threads_note = f"evaluated at {refused.min_threads} threads: {refused}"
    metrics = gate_figures(stage_json, session, artifact, inputs_npz, reference_npy)
    measured_in = str(stage_json) if metrics is not None else "evaluate"
    if metrics is None:
        metrics = compare_with_reference(session.run, inputs_npz, reference_npy)
        metrics["threads"] = session.threads_in_effect
    name, missed = tier(metrics, tiers)
    seq_len = int(load_inputs(inputs_npz)[0].shape[-1])
    result = stage_metrics(
        out_json,
        artifact,
        started,
        model=model,
        seq_len=seq_len,
        backend=backend,
        precision=precision,
        **metrics,
        tier=name,
        tier_missed=missed,
        tiers=tiers,
        **({"threads_note": threads_note} if threads_note else {}),
        passed=name != BROKEN,
        runtime=session.runtime,
        runtime_version=session.version,
        measured_in=measured_in,
        status="ok",
    )
    log.info(
        "%s %s: tier %s (top-1 %.2f%% [%.2f, %.2f], mean KLD %.2e, ppl %+.3f%%)%s",
        model,
        backend,
        name,
        metrics["top1_pct"],
        metrics["top1_ci95_low"],
        metrics["top1_ci95_high"],
        metrics["kld_mean"],
        metrics["ppl_change_pct"] or 0.0,
        "".join(f"; missed {t}: {', '.join(r)}" for t, r in missed.items()),
    )
    return result


def failed_evaluation(
    out_json: Path, record: dict, *, model: str, seq_len: int, backend: str, precision: str, runtime: str
) -> dict:
    """Write the accuracy JSON of a format that has no figures: its conversion, gate or evaluation
    failed (``record``: ``failed_at``, ``reason``, ``log`` of :mod:`lmship.records`)."""
    result = {
        "model": model,
        "seq_len": seq_len,
        "backend": backend,
        "precision": precision,
        "runtime": runtime,
        "status": "failed",
        "tier": "failed",
        "passed": False,
        **{k: record.get(k) for k in ("failed_at", "reason", "log")},
        **{k: record[k] for k in ("killed_for_memory", "peak_rss_mb", "mem_mb") if k in record},
    }
    write_json(out_json, result)
    log.warning("%s %s: failed at %s: %s", model, backend, result["failed_at"], result["reason"])
    return result


#: ``python -m lmship evaluate``: its options are the function's parameters.
main = command(
    evaluate,
    config={"tiers": ("quality_tiers",)},
    defaults={"model": "model", "precision": "fp32"},
    choices={"runtime": NAMES},
)


if __name__ == "__main__":
    main()
