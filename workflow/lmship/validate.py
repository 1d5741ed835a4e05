"""The gate of every conversion: its output must agree with the PyTorch reference."""

from __future__ import annotations

import logging
from pathlib import Path

from . import StageError
from .evaluate import compare_with_reference, measured_by
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
) -> dict:
    """Run ``artifact`` on the eval inputs; raise :class:`StageError` if top-1 agreement < ``min_top1`` %.

    The figures name the runtime that measured them and the evaluation set, so the
    ``evaluate`` stage can take them instead of measuring the same file again
    (:func:`lmship.evaluate.gate_figures`).
    """
    session = open_backend(runtime, artifact, threads=0)
    metrics = compare_with_reference(session.run, inputs_npz, reference_npy)
    metrics.update(measured_by(session, inputs_npz, reference_npy))
    return check_gate(metrics, min_top1=min_top1, stage=stage, artifact=artifact)


def check_gate(metrics: dict, *, min_top1: float, stage: str, artifact: Path) -> dict:
    """Raise :class:`StageError` naming stage, file and figures if ``metrics`` miss the gate; else return them."""
    log.info("%s: %s vs PyTorch reference: %s", stage, artifact, metrics)
    if not metrics["finite"]:
        raise StageError(f"{stage}: {artifact} produced NaN or infinite logits")
    if metrics["top1_agreement_pct"] < min_top1:
        raise StageError(
            f"{stage}: {artifact} agrees with PyTorch on the top-1 token for only "
            f"{metrics['top1_agreement_pct']:.2f}% of positions (required >= {min_top1}%); "
            f"max abs logit diff {metrics['max_abs_diff']:.3g}. The conversion changed the model's answers."
        )
    return metrics
