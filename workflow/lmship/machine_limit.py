"""The CPU's own matmul limit at a given thread count: fp32, bf16 and int8, best kernel found here.

A short measurement, recorded once per run and thread count, against which
the summary sets each backend's achieved GFLOP/s (or GOP/s) in the arithmetic
its matmuls run in (``Backend.arithmetic``). Every runtime the workflow times
brings its own kernels, so each limit is the fastest of them:

* fp32: ``torch.mm``, ONNX Runtime ``MatMul`` (MLAS) and OpenVINO ``MatMul`` (oneDNN);
* bf16: ``torch.mm`` on bf16 tensors and OpenVINO ``MatMul`` with the bf16
  inference-precision hint (AVX-512 BF16 / AMX); absent, with the reason, on
  a CPU without bf16 instructions;
* int8: ONNX Runtime ``MatMulInteger`` (u8 x s8 -> s32, VNNI where present) and
  OpenVINO's integer ``MatMul`` (a 256-level FakeQuantize on the activations and
  int8 weights, which its low-precision transformations run on oneDNN's int8 kernels).

Each kernel runs on a square ``n x n x n`` product and on two products of the
shape a small language model's layers have at sequence length 128 (``SHAPES``:
128 rows, inner sizes 576 and 1536): oneDNN is faster on those than on the
square one, and a format's share of the limit must not exceed 100 % because the
limit was measured on the wrong shape. The kernels OpenVINO ran (its
``exec_type``) are recorded, so a silent fp32 fallback shows. Each figure is the
median of timed repeats after warm-up.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from .cli import command, config_default
from .files import write_json
from .host import BF16_FLAGS, cpu_flags, cpu_model, limit_threads_env
from .runtimes.onnxruntime import session_options
from .runtimes.pytorch import set_threads
from .timing import timed_runs

log = logging.getLogger(__name__)

SIZE = 2048  # n of the square product
#: (m, k, n) of every product timed: the square one and a small LM layer's at 128 tokens
SHAPES = ((SIZE, SIZE, SIZE), (128, 576, 1536), (128, 1536, 576))
WARMUP, REPEATS, MIN_SECONDS = 2, 10, 1.0
#: result key of each arithmetic's limit (GFLOP/s for floats, GOP/s for int8)
LIMIT_KEYS = {"fp32": "fp32_gflops", "bf16": "bf16_gflops", "int8": "int8_gops"}


def _median_seconds(fn: Callable[[], object]) -> float:
    return float(np.median(timed_runs(fn, warmup=WARMUP, repeats=REPEATS, min_seconds=MIN_SECONDS))) / 1e3


def _ort_matmul(op: str, a_type, y_type, weight: np.ndarray, m: int, threads: int):
    """An ONNX Runtime session computing ``op(A, weight)`` for ``A`` of ``m`` rows."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node(op, ["A", "B"], ["Y"])],
        op,
        [helper.make_tensor_value_info("A", a_type, [m, k])],
        [helper.make_tensor_value_info("Y", y_type, [m, n])],
        [numpy_helper.from_array(weight, "B")],
    )
    opset = config_default("export", "opset")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)
    model = onnx.shape_inference.infer_shapes(model)
    return ort.InferenceSession(model.SerializeToString(), session_options(threads))


def _openvino_matmul(model, a: np.ndarray, threads: int, precision_hint: str) -> tuple[float, list[str]]:
    """Median seconds of an OpenVINO MatMul model on ``a`` and the kernels its MatMul ran on."""
    import openvino as ov

    from .runtimes.openvino import compile_ir

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mm.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
        compiled = compile_ir(path, threads, precision_hint=precision_hint, perf_count=True)
    request = compiled.create_infer_request()
    seconds = _median_seconds(lambda: request.infer([a]))
    kernels = sorted(
        {p.exec_type for p in request.get_profiling_info() if p.node_type.startswith(("MatMul", "FullyConnected"))}
    )
    return seconds, kernels


def _float_model(b: np.ndarray, m: int):
    import openvino as ov
    import openvino.opset13 as ops

    a = ops.parameter([m, b.shape[0]], ov.Type.f32, name="A")
    return ov.Model([ops.matmul(a, ops.constant(b), False, False)], [a], "mm")


def _int8_model(w8: np.ndarray, m: int):
    import openvino as ov
    import openvino.opset13 as ops

    a = ops.parameter([m, w8.shape[0]], ov.Type.f32, name="A")
    lo, hi = ops.constant(np.float32(0.0)), ops.constant(np.float32(1.0))
    act = ops.fake_quantize(a, lo, hi, lo, hi, 256)
    scale = ops.constant(np.full((1, w8.shape[1]), 0.01, np.float32))
    weight = ops.multiply(ops.convert(ops.constant(w8), ov.Type.f32), scale)
    return ov.Model([ops.matmul(act, weight, False, False)], [a], "mmi")


def _has_bf16() -> bool:
    return bool(set(BF16_FLAGS) & set(cpu_flags()))


def _measure(threads: int, shapes) -> tuple[dict[str, dict[str, float]], dict[str, list[str]]]:
    """{arithmetic: {"<kernel> <m>x<k>x<n>": G(FL)OP/s}} and OpenVINO's kernels per arithmetic."""
    import torch
    from onnx import TensorProto

    set_threads(threads)
    rng = np.random.default_rng(0)
    rates: dict[str, dict[str, float]] = {"fp32": {}, "bf16": {}, "int8": {}}
    kernels: dict[str, set[str]] = {"fp32": set(), "bf16": set(), "int8": set()}
    bf16 = _has_bf16()
    for m, k, n in shapes:
        ops = 2.0 * m * k * n
        tag = f"{m}x{k}x{n}"
        a32 = rng.standard_normal((m, k), dtype=np.float32)
        b32 = rng.standard_normal((k, n), dtype=np.float32)
        ta, tb = torch.from_numpy(a32), torch.from_numpy(b32)
        rates["fp32"][f"torch {tag}"] = ops / _median_seconds(partial(torch.mm, ta, tb))
        sess = _ort_matmul("MatMul", TensorProto.FLOAT, TensorProto.FLOAT, b32, m, threads)
        rates["fp32"][f"onnxruntime {tag}"] = ops / _median_seconds(partial(sess.run, None, {"A": a32}))
        seconds, used = _openvino_matmul(_float_model(b32, m), a32, threads, "f32")
        rates["fp32"][f"openvino {tag}"] = ops / seconds
        kernels["fp32"].update(used)
        if bf16:
            ha, hb = ta.bfloat16(), tb.bfloat16()
            rates["bf16"][f"torch {tag}"] = ops / _median_seconds(partial(torch.mm, ha, hb))
            seconds, used = _openvino_matmul(_float_model(b32, m), a32, threads, "bf16")
            rates["bf16"][f"openvino {tag}"] = ops / seconds
            kernels["bf16"].update(used)
        a8 = rng.integers(0, 255, (m, k), dtype=np.uint8)
        w8 = rng.integers(-127, 128, (k, n), dtype=np.int8)
        sess8 = _ort_matmul("MatMulInteger", TensorProto.UINT8, TensorProto.INT32, w8, m, threads)
        rates["int8"][f"onnxruntime {tag}"] = ops / _median_seconds(partial(sess8.run, None, {"A": a8}))
        a01 = rng.uniform(0.0, 1.0, (m, k)).astype(np.float32)
        seconds, used = _openvino_matmul(_int8_model(w8, m), a01, threads, "f32")
        rates["int8"][f"openvino {tag}"] = ops / seconds
        kernels["int8"].update(used)
    giga = {kind: {name: round(r / 1e9, 1) for name, r in table.items()} for kind, table in rates.items()}
    return giga, {kind: sorted(used) for kind, used in kernels.items()}


def machine_limit(out_json: Path, threads: int, shapes=SHAPES) -> dict:
    """Measure the fp32, bf16 and int8 matmul limits at ``threads`` threads; write them to ``out_json``."""
    limit_threads_env(threads)
    import onnxruntime as ort
    import openvino as ov
    import torch

    rates, kernels = _measure(threads, shapes)
    result: dict = {"threads": threads, "n": SIZE, "shapes": ["x".join(map(str, s)) for s in shapes]}
    for kind, key in LIMIT_KEYS.items():
        if rates[kind]:
            best = max(rates[kind], key=rates[kind].get)
            result[key], result[f"{kind}_by"] = rates[kind][best], best
        else:
            result[key] = None
            result[f"{kind}_absent"] = (
                f"this CPU has no bf16 instructions (none of {', '.join(BF16_FLAGS)} in /proc/cpuinfo)"
            )
    result |= {
        "candidates": rates,
        "openvino_kernels": kernels,
        "torch_version": torch.__version__,
        "onnxruntime_version": ort.__version__,
        "openvino_version": ov.__version__,
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
    }
    log.info("matmul limits at %d threads: %s", threads, result)
    write_json(out_json, result)
    return result


def limit_of(limits: dict, arithmetic: str) -> float | None:
    """The limit of ``arithmetic`` in a :func:`machine_limit` result (None where it was not measured)."""
    with contextlib.suppress(KeyError, TypeError, ValueError):
        value = limits[LIMIT_KEYS[arithmetic]]
        return None if value is None else float(value)
    return None


#: ``python -m lmship machine_limit``: its options are the function's parameters.
main = command(machine_limit)


if __name__ == "__main__":
    main()
