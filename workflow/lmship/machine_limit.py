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

import argparse
import logging
import time
from pathlib import Path

import numpy as np

from .files import write_json
from .host import cpu_flags, cpu_model
from .logs import log_to
from .timing import limit_threads_env

log = logging.getLogger(__name__)


def _median_seconds(fn, repeats: int, min_seconds: float) -> float:
    for _ in range(2):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _ort_session(graph_builder, threads: int):
    import onnx
    import onnxruntime as ort

    model = graph_builder()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx.shape_inference.infer_shapes(model).SerializeToString(), options)


def matmul_peak(threads: int, n: int = 2048, repeats: int = 10, min_seconds: float = 2.0) -> dict:
    """Measure fp32 and int8 matmul throughput at ``threads`` threads."""
    limit_threads_env(threads)
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    a32 = rng.standard_normal((n, n), dtype=np.float32)
    b32 = rng.standard_normal((n, n), dtype=np.float32)
    ops = 2.0 * n**3

    ta, tb = torch.from_numpy(a32), torch.from_numpy(b32)
    torch_s = _median_seconds(lambda: torch.mm(ta, tb), repeats, min_seconds)

    def fp32_graph():
        node = helper.make_node("MatMul", ["A", "B"], ["Y"])
        graph = helper.make_graph(
            [node],
            "mm",
            [helper.make_tensor_value_info("A", TensorProto.FLOAT, [n, n])],
            [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [n, n])],
            [numpy_helper.from_array(b32, "B")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    sess32 = _ort_session(fp32_graph, threads)
    ort32_s = _median_seconds(lambda: sess32.run(None, {"A": a32}), repeats, min_seconds)

    a8 = rng.integers(0, 255, (n, n), dtype=np.uint8)
    b8 = rng.integers(-127, 127, (n, n), dtype=np.int8)

    def int8_graph():
        node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
        graph = helper.make_graph(
            [node],
            "mmi",
            [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
            [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
            [numpy_helper.from_array(b8, "B")],
        )
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)

    sess8 = _ort_session(int8_graph, threads)
    ort8_s = _median_seconds(lambda: sess8.run(None, {"A": a8}), repeats, min_seconds)
    result = {
        "threads": threads,
        "n": n,
        "fp32_gflops": round(ops / min(torch_s, ort32_s) / 1e9, 1),
        "fp32_gflops_torch": round(ops / torch_s / 1e9, 1),
        "fp32_gflops_onnxruntime": round(ops / ort32_s / 1e9, 1),
        "int8_gops_onnxruntime": round(ops / ort8_s / 1e9, 1),
        "int8_gops": round(ops / ort8_s / 1e9, 1),
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
    }
    log.info("matmul limit at %d threads: %s", threads, result)
    return result


def measure(out_json: Path, threads: int) -> Path:
    return write_json(out_json, matmul_peak(threads))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmship machine", description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    with log_to(args.log):
        measure(args.out, args.threads)


if __name__ == "__main__":
    main()
