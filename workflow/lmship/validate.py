"""The gate of every conversion: its output must agree with the PyTorch reference.

Every conversion must keep the reference's top-1 tokens (``min_top1``); an fp32 conversion must
also keep its logits: the largest logit difference over the reference logits' standard deviation
(``max_rel_diff``) and the mean KL divergence on the prose (``max_mean_kld``) are bounded, so a
graph that drops a mechanism fails even on a model whose top-1 tokens forgive it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from . import StageError
from .evaluate import compare_with_reference, measured_by
from .quality import figures, logit_failures
from .runtimes import open_backend

log = logging.getLogger(__name__)


def validate_artifact(
    runtime: str,
    artifact: Path,
    inputs_npz: Path,
    reference_npy: Path,
    *,
    min_top1: float,
    stage: str,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
) -> dict:
    """Run ``artifact`` on the eval inputs; raise :class:`StageError` if it misses the gate (:func:`check_gate`).

    The figures name the runtime that measured them and the evaluation set, so the
    ``evaluate`` stage can take them instead of measuring the same file again
    (:func:`lmship.evaluate.gate_figures`).
    """
    session = open_backend(runtime, artifact, threads=0)
    metrics = compare_with_reference(session.run, inputs_npz, reference_npy)
    metrics.update(measured_by(session, inputs_npz, reference_npy))
    return check_gate(
        metrics, min_top1=min_top1, stage=stage, artifact=artifact, max_rel_diff=max_rel_diff, max_mean_kld=max_mean_kld
    )


def check_gate(
    metrics: dict,
    *,
    min_top1: float,
    stage: str,
    artifact: Path,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
) -> dict:
    """Raise :class:`StageError` naming stage, file and figures if ``metrics`` miss the gate; else return them.

    The gate: top-1 agreement >= ``min_top1`` %, and when given, max |Δlogit| / std(reference
    logits) <= ``max_rel_diff`` and mean KL divergence <= ``max_mean_kld`` nats.
    """
    log.info("%s: %s vs PyTorch reference: %s", stage, artifact, metrics)
    if not metrics["finite"]:
        raise StageError(f"{stage}: {artifact} produced NaN or infinite logits")
    failures = []
    if metrics["top1_agreement_pct"] < min_top1:
        failures.append(
            f"agrees with PyTorch on the top-1 token for only {metrics['top1_agreement_pct']:.2f}% of "
            f"{metrics['positions']} positions (required >= {min_top1}%)"
        )
    failures += logit_failures(metrics, max_rel_diff=max_rel_diff, max_mean_kld=max_mean_kld)
    if failures:
        raise StageError(
            f"{stage}: {artifact} {'; '.join(failures)}; {figures(metrics)}. The conversion changed the model's "
            "answers."
        )
    return metrics
