"""Run a backend on the evaluation set and compare it with the PyTorch reference.

:func:`compare_with_reference` is the one place that does this: the
conversion gates (:mod:`lmship.validate`), the SavedModel stage and the
``evaluate`` stage all call it, so a new metric is added here once. On the
evaluation set (bundled text + seeded random ids): max and mean absolute
logit difference, cosine similarity, top-1 next-token agreement (all
positions, and text positions alone), perplexity on the text and its change
vs PyTorch. The ``evaluate`` stage adds the verdict against the tolerance of
the backend's precision (config ``tolerances``); a failing backend is never
a winner.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .cli import config_default, parser
from .evalset import load_inputs
from .files import stage_metrics
from .logs import log_to
from .metrics import compare_logits, perplexity
from .runtimes import open_backend

log = logging.getLogger(__name__)

Run = Callable[[np.ndarray], np.ndarray]


def run_eval_set(run: Run, input_ids: np.ndarray) -> np.ndarray:
    """Apply ``run`` to each ``[batch, seq]`` sample; stack to ``[n, batch, seq, vocab]``."""
    return np.stack([run(sample) for sample in input_ids])


def compare_with_reference(run: Run, inputs_npz: Path, reference_npy: Path) -> dict:
    """Run ``run`` on every evaluation sample and compare its logits with the reference logits."""
    input_ids, is_text = load_inputs(inputs_npz)
    logits = run_eval_set(run, input_ids)
    reference = np.asarray(np.load(reference_npy, mmap_mode="r"))
    metrics = compare_logits(reference, logits, is_text)
    ppl = perplexity(logits, input_ids, is_text)
    ppl_ref = perplexity(reference, input_ids, is_text)
    metrics["perplexity"] = ppl
    metrics["perplexity_reference"] = ppl_ref
    metrics["ppl_change_pct"] = 100.0 * (ppl / ppl_ref - 1.0) if ppl is not None and ppl_ref else None
    metrics["samples"] = int(input_ids.shape[0])
    metrics["text_samples"] = int(np.sum(is_text))
    return metrics


def verdict(metrics: dict, tolerance: dict) -> list[str]:
    """Return the list of tolerance violations (empty when the backend passes)."""
    failures = []
    if not metrics.get("finite", True):
        failures.append("non-finite logits")
    top1 = metrics.get("top1_agreement_text_pct", metrics["top1_agreement_pct"])
    where = "on text" if "top1_agreement_text_pct" in metrics else "overall"
    if top1 < tolerance["min_top1_pct"]:
        failures.append(f"top-1 {top1:.2f}% {where} < {tolerance['min_top1_pct']}%")
    cos = metrics["cosine_similarity"]
    if cos < tolerance["min_cosine"]:
        failures.append(f"cosine {cos:.5f} < {tolerance['min_cosine']}")
    change = metrics.get("ppl_change_pct")
    if change is not None and abs(change) > tolerance["max_ppl_change_pct"]:
        failures.append(f"perplexity {change:+.2f}% beyond ±{tolerance['max_ppl_change_pct']}%")
    return failures


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
    tolerance: dict,
) -> dict:
    """Run ``artifact`` on the evaluation set and write its accuracy and verdict to ``out_json``."""
    started = time.monotonic()
    session = open_backend(runtime, artifact, threads=0)
    metrics = compare_with_reference(session.run, inputs_npz, reference_npy)
    failures = verdict(metrics, tolerance)
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
        tolerance=tolerance,
        passed=not failures,
        failures=failures,
        runtime=session.runtime,
        runtime_version=session.version,
    )
    log.info("%s %s: %s", model, backend, "PASS" if not failures else "FAIL: " + "; ".join(failures))
    return result


def main(argv: list[str] | None = None) -> None:
    p = parser("evaluate", __doc__)
    p.add_argument("--runtime", required=True)
    p.add_argument("--artifact", type=Path, required=True)
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--reference", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", default="model")
    p.add_argument("--backend", required=True)
    p.add_argument("--precision", default="fp32", help="selects the default tolerance (config tolerances)")
    p.add_argument("--tolerance", help="JSON object (default: the config's tolerance of --precision)")
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    tolerance = json.loads(args.tolerance) if args.tolerance else config_default("tolerances", args.precision)
    with log_to(args.log):
        evaluate(
            args.runtime,
            args.artifact,
            args.inputs,
            args.reference,
            args.out,
            model=args.model,
            backend=args.backend,
            precision=args.precision,
            tolerance=tolerance,
        )


if __name__ == "__main__":
    main()
