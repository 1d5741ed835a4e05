"""Stage 4: simplify the exported ONNX graph with onnxsim, then check it.

Records node counts (total and per op type) before and after, and runs the
simplified model in ONNX Runtime against the PyTorch reference.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections import Counter
from pathlib import Path

from . import StageError
from .files import atomic_output, size_bytes, write_json
from .logs import log_to, peak_rss_mb
from .validate import add_checked_stage_arguments, validate_artifact

log = logging.getLogger(__name__)


def load_onnx(path: Path):
    """``onnx.load`` that names the file when it is truncated or not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path))
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise StageError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); it may be truncated. "
            "Delete it and rerun the workflow to rebuild it."
        ) from exc


def op_counts(model) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def simplify_onnx(
    in_onnx: Path,
    inputs_npz: Path,
    reference_npy: Path,
    out_onnx: Path,
    *,
    min_top1: float,
    metrics_json: Path | None = None,
) -> dict:
    """Run onnxsim on ``in_onnx`` and write the result to ``out_onnx``; return metrics."""
    import onnx
    import onnxsim

    model = load_onnx(in_onnx)
    before = op_counts(model)
    started = time.monotonic()
    try:
        simplified, ok = onnxsim.simplify(model, check_n=0)
    except Exception as exc:
        raise StageError(f"onnxsim failed on {in_onnx}: {type(exc).__name__}: {exc}") from exc
    if not ok:
        raise StageError(f"onnxsim could not validate the simplified model of {in_onnx}")
    del model
    seconds = time.monotonic() - started
    after = op_counts(simplified)
    with atomic_output(Path(out_onnx)) as tmp:
        onnx.save(simplified, str(tmp))
        del simplified
        check = validate_artifact("ort", tmp, inputs_npz, reference_npy, min_top1=min_top1, stage="simplify")
    metrics = {
        "artifact": str(out_onnx),
        "size_mb": round(size_bytes(out_onnx) / 1e6, 1),
        "size_mb_before": round(size_bytes(in_onnx) / 1e6, 1),
        "nodes_before": sum(before.values()),
        "nodes_after": sum(after.values()),
        "ops_before": before,
        "ops_after": after,
        "simplify_seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "onnxsim_version": onnxsim.__version__,
        "vs_pytorch": check,
    }
    log.info("onnxsim: %d -> %d nodes", metrics["nodes_before"], metrics["nodes_after"])
    if metrics_json is not None:
        write_json(metrics_json, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmship simplify", description=__doc__.split("\n\n")[0])
    add_checked_stage_arguments(parser, "--onnx", "exported ONNX model")
    args = parser.parse_args(argv)
    with log_to(args.log):
        simplify_onnx(
            args.onnx, args.inputs, args.reference, args.out, min_top1=args.min_top1, metrics_json=args.metrics
        )


if __name__ == "__main__":
    main()
