"""Simplify the exported ONNX graph with onnxsim, then check it.

Records node counts (total and per op type) before and after, and runs the
simplified model in ONNX Runtime against the PyTorch reference.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

from . import StageError
from .cli import FP32_GATE, command
from .decode_graph import GRAPH_FAMILIES
from .files import atomic_output, load_onnx, size_bytes, stage_metrics
from .gate import FORWARD, Bounds, gate_for

log = logging.getLogger(__name__)


def op_counts(model) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def simplify_onnx(
    in_onnx: Path,
    inputs_npz: Path,
    reference_npy: Path | None,
    out_onnx: Path,
    *,
    graph: str = FORWARD,
    hf_dir: Path | None = None,
    host_npz: Path | None = None,
    min_top1: float,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
    metrics_json: Path | None = None,
) -> dict:
    """Run onnxsim on ``in_onnx`` (the ``graph``) and write the result to ``out_onnx``, checked in ONNX Runtime
    against PyTorch (:func:`lmship.gate.gate_for`); return metrics."""
    import onnx
    import onnxsim

    gate = gate_for(graph, inputs_npz, reference_npy, hf_dir, host_npz, Bounds(min_top1, max_rel_diff, max_mean_kld))
    started = time.monotonic()
    model = load_onnx(in_onnx)
    before = op_counts(model)
    simplify_started = time.monotonic()
    try:
        simplified, ok = onnxsim.simplify(model, check_n=0)
    except Exception as exc:
        raise StageError(f"onnxsim failed on {in_onnx}: {type(exc).__name__}: {exc}") from exc
    if not ok:
        raise StageError(f"onnxsim could not validate the simplified model of {in_onnx}")
    del model
    seconds = time.monotonic() - simplify_started
    after = op_counts(simplified)
    with atomic_output(Path(out_onnx)) as tmp:
        onnx.save(simplified, str(tmp))
        del simplified
        check = gate("onnxruntime", tmp, stage="simplify_onnx") if gate is not None else None
    log.info("onnxsim: %d -> %d nodes", sum(before.values()), sum(after.values()))
    return stage_metrics(
        metrics_json,
        out_onnx,
        started,
        graph=graph,
        size_mb_before=round(size_bytes(in_onnx) / 1e6, 1),
        nodes_before=sum(before.values()),
        nodes_after=sum(after.values()),
        ops_before=before,
        ops_after=after,
        simplify_seconds=round(seconds, 1),
        onnxsim_version=onnxsim.__version__,
        vs_pytorch=check,
    )


#: ``python -m lmship simplify_onnx``: its options are the function's parameters.
main = command(
    simplify_onnx,
    config={
        **FP32_GATE,
    },
    choices={"graph": GRAPH_FAMILIES},
)


if __name__ == "__main__":
    main()
