"""The CPU's own matmul limit at a given thread count (fp32 and int8).

A short measurement, recorded once per run and thread count, against which
the summary sets each backend's achieved GFLOP/s (or GOP/s):

* fp32: ``torch.mm`` and ONNX Runtime ``MatMul`` on square ``n x n`` matrices;
  the faster of the two is the fp32 limit;
* int8: ONNX Runtime ``MatMulInteger`` (uint8 x int8 -> int32, the kernel
  behind ORT's dynamic quantisation; VNNI where the CPU has it).

Each figure is the median of timed repeats after warm-up.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .cli import config_default, parser
from .files import write_json
from .host import cpu_flags, cpu_model, limit_threads_env
from .logs import log_to
from .runtimes import ort_session_options
from .timing import timed_runs

log = logging.getLogger(__name__)

SIZE = 2048  # n of the square matrices
WARMUP, REPEATS, MIN_SECONDS = 2, 10, 2.0


def _median_seconds(fn) -> float:
    return float(np.median(timed_runs(fn, warmup=WARMUP, repeats=REPEATS, min_seconds=MIN_SECONDS))) / 1e3


def _ort_matmul(op: str, a_type, y_type, weight: np.ndarray, threads: int):
    """An ONNX Runtime session computing ``op(A, weight)`` for a square ``A`` (SIZE x SIZE)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    n = weight.shape[0]
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        op,
        [helper.make_tensor_value_info("A", a_type, [n, n])],
        [helper.make_tensor_value_info("Y", y_type, [n, n])],
        [numpy_helper.from_array(weight, "B")],
    )
    opset = config_default("export", "opset")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model)
    return ort.InferenceSession(model.SerializeToString(), ort_session_options(threads))


def machine_limit(out_json: Path, threads: int, n: int = SIZE) -> dict:
    """Measure fp32 and int8 matmul throughput at ``threads`` threads; write it to ``out_json``."""
    limit_threads_env(threads)
    import onnxruntime as ort
    import torch
    from onnx import TensorProto

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a32 = rng.standard_normal((n, n), dtype=np.float32)
    b32 = rng.standard_normal((n, n), dtype=np.float32)
    ops = 2.0 * n**3

    ta, tb = torch.from_numpy(a32), torch.from_numpy(b32)
    torch_s = _median_seconds(lambda: torch.mm(ta, tb))
    sess32 = _ort_matmul("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, b32, threads)
    ort32_s = _median_seconds(lambda: sess32.run(None, {"A": a32}))

    a8 = rng.integers(0, 255, (n, n), dtype=np.uint8)
    b8 = rng.integers(-127, 127, (n, n), dtype=np.int8)
    sess8 = _ort_matmul("MatMulInteger", TensorProto.UINT8, TensorProto.INT32, b8, threads)
    ort8_s = _median_seconds(lambda: sess8.run(None, {"A": a8}))
    result = {
        "threads": threads,
        "n": n,
        "fp32_gflops": round(ops / min(torch_s, ort32_s) / 1e9, 1),
        "fp32_gflops_torch": round(ops / torch_s / 1e9, 1),
        "fp32_gflops_onnxruntime": round(ops / ort32_s / 1e9, 1),
        "int8_gops": round(ops / ort8_s / 1e9, 1),
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
    }
    log.info("matmul limit at %d threads: %s", threads, result)
    write_json(out_json, result)
    return result


def main(argv: list[str] | None = None) -> None:
    p = parser("machine_limit", __doc__)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        machine_limit(args.out, args.threads)


if __name__ == "__main__":
    main()
