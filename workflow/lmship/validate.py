"""Check a freshly converted artifact against the PyTorch reference logits."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from . import StageError
from .evalset import load_inputs
from .metrics import compare_logits
from .runtimes import open_backend

log = logging.getLogger(__name__)


def run_all(run, input_ids: np.ndarray) -> np.ndarray:
    """Apply ``run`` to each ``[batch, seq]`` sample; stack to ``[n, batch, seq, vocab]``."""
    return np.stack([run(sample) for sample in input_ids])


def validate_artifact(
    runtime: str,
    artifact: Path,
    inputs_npz: Path,
    reference_npy: Path,
    *,
    min_top1: float,
    stage: str,
) -> dict[str, float]:
    """Run ``artifact`` on the eval inputs; raise :class:`StageError` if top-1 agreement < ``min_top1`` %."""
    input_ids, is_text = load_inputs(inputs_npz)
    session = open_backend(runtime, artifact, threads=0)
    logits = run_all(session.run, input_ids)
    reference = np.load(reference_npy, mmap_mode="r")
    return check_agreement(reference, logits, is_text, min_top1=min_top1, stage=stage, artifact=artifact)


def check_agreement(
    reference: np.ndarray,
    logits: np.ndarray,
    is_text: np.ndarray,
    *,
    min_top1: float,
    stage: str,
    artifact: Path,
) -> dict[str, float]:
    metrics = compare_logits(np.asarray(reference), logits, is_text)
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


def add_checked_stage_arguments(parser: argparse.ArgumentParser, source: str, help: str) -> None:
    """Command-line arguments shared by the conversion stages checked against PyTorch."""
    parser.add_argument(source, type=Path, required=True, help=help)
    parser.add_argument("--inputs", type=Path, required=True, help="evaluation inputs (.npz)")
    parser.add_argument("--reference", type=Path, required=True, help="PyTorch reference logits (.npy)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, help="write the stage's metrics here (JSON)")
    parser.add_argument("--min-top1", type=float, default=99.0, help="fail below this top-1 agreement (%%)")
    parser.add_argument("--log", type=Path)
