"""Accuracy of one backend against the PyTorch fp32 reference, with a verdict.

On the evaluation set (bundled text + seeded random ids): max and mean
absolute logit difference, cosine similarity, top-1 next-token agreement (all
positions, and text positions alone), perplexity on the text and its change
vs PyTorch. The verdict compares these with the tolerance of the backend's
precision (config ``tolerances``); a failing backend is never a winner.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from .evalset import load_inputs
from .files import atomic_output, read_json, write_json
from .logs import log_to, peak_rss_mb
from .metrics import compare_logits, perplexity
from .runtimes import open_backend
from .validate import run_all

log = logging.getLogger(__name__)

ACCURACY_COLUMNS = [
    "model",
    "seq_len",
    "backend",
    "precision",
    "max_abs_diff",
    "mean_abs_diff",
    "cosine_similarity",
    "top1_agreement_pct",
    "top1_agreement_text_pct",
    "perplexity",
    "perplexity_reference",
    "ppl_change_pct",
    "passed",
    "failures",
]


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


def evaluate_backend(
    runtime: str,
    artifact: Path,
    inputs_npz: Path,
    reference_npy: Path,
    reference_json: Path,
    out_json: Path,
    *,
    model: str,
    backend: str,
    precision: str,
    tolerance: dict,
) -> dict:
    """Run ``artifact`` on the evaluation set and write its accuracy and verdict to ``out_json``."""
    input_ids, is_text = load_inputs(inputs_npz)
    started = time.monotonic()
    session = open_backend(runtime, artifact, threads=0)
    logits = run_all(session.run, input_ids)
    reference = np.load(reference_npy, mmap_mode="r")
    metrics = compare_logits(np.asarray(reference), logits, is_text)
    ppl = perplexity(logits, input_ids, is_text)
    ppl_ref = read_json(reference_json)["perplexity_text"]
    metrics["perplexity"] = ppl
    metrics["perplexity_reference"] = ppl_ref
    metrics["ppl_change_pct"] = 100.0 * (ppl / ppl_ref - 1.0) if ppl is not None and ppl_ref else None
    failures = verdict(metrics, tolerance)
    result = {
        "model": model,
        "seq_len": int(input_ids.shape[-1]),
        "backend": backend,
        "precision": precision,
        **metrics,
        "tolerance": tolerance,
        "passed": not failures,
        "failures": failures,
        "runtime": session.runtime,
        "runtime_version": session.version,
        "samples": int(input_ids.shape[0]),
        "text_samples": int(np.sum(is_text)),
        "seconds": round(time.monotonic() - started, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    write_json(out_json, result)
    log.info("%s %s: %s", model, backend, "PASS" if not failures else "FAIL: " + "; ".join(failures))
    return result


def accuracy_table(jsons: list[Path], out_csv: Path) -> Path:
    """Gather per-backend accuracy JSONs into one CSV."""
    rows = []
    for path in jsons:
        r = read_json(path)
        row = {k: r.get(k) for k in ACCURACY_COLUMNS}
        row["failures"] = "; ".join(r.get("failures", []))
        rows.append(row)
    with atomic_output(Path(out_csv)) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ACCURACY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return Path(out_csv)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmship evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", required=True)
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--inputs", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--reference-metrics", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default="model")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument(
        "--tolerance",
        default='{"min_top1_pct": 99, "min_cosine": 0.999, "max_ppl_change_pct": 1}',
        help="JSON object",
    )
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    with log_to(args.log):
        evaluate_backend(
            args.runtime,
            args.artifact,
            args.inputs,
            args.reference,
            args.reference_metrics,
            args.out,
            model=args.model,
            backend=args.backend,
            precision=args.precision,
            tolerance=json.loads(args.tolerance),
        )


if __name__ == "__main__":
    main()
