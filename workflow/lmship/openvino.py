"""OpenVINO backends: the IR made from the ONNX model, NNCF weight compression, bf16.

* ``convert_ir``: ONNX -> OpenVINO IR (``.xml`` + ``.bin``) with fp32 weights
  (``compress_to_fp16=False``: the fp32 IR must be the fp32 model), plus an
  op / precision census (op types and counts, weight element types and bytes).
* ``compress_ir``: NNCF ``compress_weights`` variants of that IR (:data:`VARIANTS`):
  int8 / int4 weights, per channel or in groups, data-free or data-aware
  (AWQ + scale estimation on calibration token windows).
* ``open_openvino``: a :class:`lmship.runtimes.Session` over an IR with
  ``INFERENCE_NUM_THREADS``, latency hint and f32 / bf16 inference precision;
  bf16 is refused with a :class:`StageError` on a CPU without it.
* ``open_torch_bf16``: PyTorch with bf16 autocast (logits returned as fp32).
* ``bf16_matmul_peak`` / ``int8_matmul_peak``: the machine's bf16 and int8
  matmul throughput with the best kernels found here (OpenVINO / oneDNN and torch).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from . import StageError
from .files import atomic_output, size_bytes, write_json
from .logs import log_to, peak_rss_mb
from .runtimes import Session

log = logging.getLogger(__name__)

PRECISION_HINTS = ("f32", "bf16")

#: NNCF weight-compression variants: name -> ``compress_weights`` settings.
#: ``group_size`` -1 means per output channel; ``data`` means a calibration set is needed.
VARIANTS: dict[str, dict] = {
    "int8-asym": {"mode": "int8_asym", "group_size": -1, "ratio": 1.0},
    "int8-sym": {"mode": "int8_sym", "group_size": -1, "ratio": 1.0},
    "int8-asym-fp32-head": {"mode": "int8_asym", "group_size": -1, "ratio": 1.0, "keep_head": True},
    "int4-asym-g32": {"mode": "int4_asym", "group_size": 32, "ratio": 1.0},
    "int4-asym-g32-awq": {
        "mode": "int4_asym",
        "group_size": 32,
        "ratio": 1.0,
        "awq": True,
        "scale_estimation": True,
        "data": True,
    },
}


def _core():
    import openvino as ov

    return ov.Core()


def _ir_files(xml: Path) -> tuple[Path, Path]:
    xml = Path(xml)
    return xml, xml.with_suffix(".bin")


def _save_ir(model, out_xml: Path, *, compress_to_fp16: bool) -> Path:
    """Save ``model`` as ``out_xml`` + ``.bin`` so that a crash never leaves a half-written pair."""
    import openvino as ov

    out_xml, out_bin = _ir_files(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_xml.parent, prefix=f".{out_xml.stem}.") as tmp_dir:
        tmp_xml = Path(tmp_dir) / out_xml.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        with atomic_output(out_xml) as tmp:  # the .xml appears last, after its .bin
            tmp_xml.with_suffix(".bin").replace(out_bin)
            tmp_xml.replace(tmp)
    return out_xml


def census(model) -> dict:
    """Op types and counts of an OpenVINO model, and its weights (Constants) by element type."""
    ops: Counter = Counter()
    weight_count: Counter = Counter()
    weight_bytes: Counter = Counter()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        ops[kind] += 1
        if kind == "Constant":
            elem = op.get_output_element_type(0).get_type_name()
            weight_count[elem] += 1
            weight_bytes[elem] += int(op.get_byte_size())
    inputs = [
        {"name": p.get_any_name(), "shape": str(p.get_partial_shape()), "type": p.get_element_type().get_type_name()}
        for p in model.inputs
    ]
    outputs = [
        {"shape": str(p.get_partial_shape()), "type": p.get_element_type().get_type_name()} for p in model.outputs
    ]
    return {
        "total": sum(ops.values()),
        "ops": dict(ops.most_common()),
        "weights": {e: {"constants": weight_count[e], "bytes": weight_bytes[e]} for e, _ in weight_bytes.most_common()},
        "weight_bytes": sum(weight_bytes.values()),
        "inputs": inputs,
        "outputs": outputs,
    }


def convert_ir(
    onnx_path: Path,
    out_xml: Path,
    *,
    census_json: Path | None = None,
    metrics_json: Path | None = None,
) -> Path:
    """Convert ``onnx_path`` to an fp32 OpenVINO IR at ``out_xml`` (+ ``.bin``); write its census."""
    import openvino as ov

    if not Path(onnx_path).is_file():
        raise StageError(f"{onnx_path} does not exist; run the export stage first")
    started = time.monotonic()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise StageError(f"OpenVINO {ov.__version__} cannot convert {onnx_path}: {type(exc).__name__}: {exc}") from exc
    _save_ir(model, out_xml, compress_to_fp16=False)
    seconds = time.monotonic() - started
    info = census(model)
    if census_json is not None:
        write_json(census_json, info)
    if metrics_json is not None:
        write_json(metrics_json, _metrics(out_xml, seconds, info, openvino_version=ov.__version__))
    return Path(out_xml)


def _metrics(out_xml: Path, seconds: float, info: dict, **extra) -> dict:
    xml, binary = _ir_files(out_xml)
    return {
        "artifact": str(xml),
        "size_mb": round((size_bytes(xml) + size_bytes(binary)) / 1e6, 1),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "ops_total": info["total"],
        "weights": info["weights"],
        **extra,
    }


def compress_ir(
    ir_xml: Path,
    out_xml: Path,
    *,
    mode: str,
    group_size: int = -1,
    ratio: float = 1.0,
    awq: bool = False,
    scale_estimation: bool = False,
    keep_head: bool = False,
    calibration: np.ndarray | None = None,
    census_json: Path | None = None,
    metrics_json: Path | None = None,
) -> Path:
    """NNCF ``compress_weights`` of the IR ``ir_xml`` into ``out_xml`` (+ ``.bin``).

    ``mode`` is an NNCF ``CompressWeightsMode`` value (``int8_asym``, ``int4_asym``, ...),
    ``group_size`` -1 for per output channel. AWQ / scale estimation need
    ``calibration``: token windows ``int64 [n, batch, seq]`` disjoint from the
    evaluation windows. ``keep_head`` leaves the embedding Gather and the LM head
    (the MatMul that makes the logits) uncompressed.
    """
    import nncf

    try:
        mode_enum = nncf.CompressWeightsMode(mode)
    except ValueError as exc:
        known = [m.value for m in nncf.CompressWeightsMode]
        raise StageError(f"unknown NNCF weight-compression mode {mode!r}; expected one of {known}") from exc
    data_aware = awq or scale_estimation
    if data_aware and calibration is None:
        raise StageError("AWQ / scale estimation need calibration token windows; pass calibration=[n, batch, seq] ids")
    model = _core().read_model(str(ir_xml))
    dataset = None
    if calibration is not None:
        name = model.inputs[0].get_any_name()
        windows = np.asarray(calibration, dtype=np.int64)
        dataset = nncf.Dataset([{name: w} for w in windows])
    kwargs: dict = {"mode": mode_enum, "ratio": ratio, "group_size": group_size, "dataset": dataset}
    if keep_head:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=head_and_embedding(model))
    if data_aware:
        kwargs.update(awq=awq, scale_estimation=scale_estimation, subset_size=len(calibration))
    started = time.monotonic()
    try:
        compressed = nncf.compress_weights(model, **kwargs)
    except Exception as exc:
        raise StageError(
            f"NNCF {nncf.__version__} compress_weights({mode}, group_size={group_size}, ratio={ratio}, "
            f"awq={awq}, scale_estimation={scale_estimation}) failed on {ir_xml}: {type(exc).__name__}: {exc}"
        ) from exc
    _save_ir(compressed, out_xml, compress_to_fp16=False)
    seconds = time.monotonic() - started
    info = census(compressed)
    if census_json is not None:
        write_json(census_json, info)
    if metrics_json is not None:
        recipe = {k: v for k, v in kwargs.items() if k not in ("dataset", "ignored_scope")} | {"mode": mode}
        if keep_head:
            recipe["kept_uncompressed"] = list(kwargs["ignored_scope"].names)
        write_json(
            metrics_json,
            _metrics(
                out_xml,
                seconds,
                info,
                recipe=recipe,
                calibration_windows=0 if calibration is None else len(calibration),
                nncf_version=nncf.__version__,
            ),
        )
    return Path(out_xml)


def head_and_embedding(model) -> list[str]:
    """Names of the embedding lookups (Gather of a Constant) and of the MatMul(s) feeding the outputs."""
    names = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Gather" and op.input_value(0).get_node().get_type_name() == "Constant":
            names.append(op.get_friendly_name())
    for result in model.get_results():
        source = result.input_value(0).get_node()
        if source.get_type_name() == "MatMul":
            names.append(source.get_friendly_name())
    if not names:
        raise StageError("no embedding Gather or output MatMul found to keep uncompressed")
    return names


def compress_variant(ir_xml: Path, out_xml: Path, variant: str, calibration: np.ndarray | None = None, **kw) -> Path:
    """:func:`compress_ir` with the settings of a named :data:`VARIANTS` entry."""
    if variant not in VARIANTS:
        raise StageError(f"unknown NNCF variant {variant!r}; expected one of {tuple(VARIANTS)}")
    settings = {k: v for k, v in VARIANTS[variant].items() if k != "data"}
    needs = VARIANTS[variant].get("data", False)
    return compress_ir(ir_xml, out_xml, calibration=calibration if needs else None, **settings, **kw)


def cpu_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin can run bf16 here (AVX-512 BF16 or AMX)."""
    return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _require_bf16(what: str) -> None:
    if not cpu_has_bf16():
        raise StageError(
            f"{what}: bf16 was requested but this CPU has no bf16 instructions (OpenVINO's "
            "OPTIMIZATION_CAPABILITIES lists no BF16; it needs AVX-512 BF16 or AMX). "
            "Use precision f32 on this machine; the bf16 row is absent for that reason."
        )


def compile_ir(
    artifact: Path,
    threads: int,
    *,
    precision_hint: str = "f32",
    dynamic_quantization: int | None = None,
    perf_count: bool = False,
):
    """Compile the IR (or ONNX) ``artifact`` for the CPU with the given threads and precision hint.

    ``dynamic_quantization`` is the CPU plugin's ``DYNAMIC_QUANTIZATION_GROUP_SIZE``:
    ``None`` keeps OpenVINO's default (32: activations of compressed-weight
    MatMuls are quantised to int8 per group of 32 on the fly), 0 turns it off.
    """
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    if precision_hint not in PRECISION_HINTS:
        raise StageError(f"unknown OpenVINO precision hint {precision_hint!r}; expected one of {PRECISION_HINTS}")
    if precision_hint == "bf16":
        _require_bf16(f"OpenVINO {artifact}")
    config = {
        hints.performance_mode: hints.PerformanceMode.LATENCY,
        hints.inference_precision: ov.Type.bf16 if precision_hint == "bf16" else ov.Type.f32,
        props.enable_profiling: perf_count,
    }
    if threads > 0:
        config[props.inference_num_threads] = threads
    if dynamic_quantization is not None:
        config[hints.dynamic_quantization_group_size] = dynamic_quantization
    try:
        return _core().compile_model(str(artifact), "CPU", config)
    except Exception as exc:
        raise StageError(f"OpenVINO cannot compile {artifact} for the CPU: {type(exc).__name__}: {exc}") from exc


def open_openvino(
    artifact: Path, threads: int, *, precision_hint: str = "f32", dynamic_quantization: int | None = None
) -> Session:
    """A :class:`Session` running the OpenVINO IR ``artifact`` on the CPU (see :func:`compile_ir`)."""
    import openvino as ov

    artifact = Path(artifact)
    if not artifact.exists():
        raise StageError(f"artifact {artifact} does not exist")
    compiled = compile_ir(artifact, threads, precision_hint=precision_hint, dynamic_quantization=dynamic_quantization)
    request = compiled.create_infer_request()
    shape = (
        tuple(compiled.inputs[0].get_partial_shape().to_shape())
        if compiled.inputs[0].get_partial_shape().is_static
        else None
    )

    def run(input_ids: np.ndarray) -> np.ndarray:
        if shape is not None and tuple(input_ids.shape) != shape:
            raise StageError(f"{artifact} takes input shape {shape}, got {input_ids.shape}")
        request.infer([np.ascontiguousarray(input_ids, dtype=np.int64)])
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    session = Session(f"openvino-{precision_hint}", ov.__version__, threads, run)
    session.compiled = compiled  # for reading back the applied properties
    return session


def open_torch_bf16(hf_dir: Path, threads: int) -> Session:
    """PyTorch fp32 weights run under CPU bf16 autocast; logits returned as fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    _require_bf16(f"PyTorch bf16 autocast of {hf_dir}")
    if threads > 0:
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()

    def run(input_ids: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, use_cache=False)
        return out.logits.float().numpy()

    return Session("torch-bf16-autocast", torch.__version__, threads, run)


# --- machine limits -------------------------------------------------------------------


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


def _ov_matmul_seconds(model, threads: int, precision_hint: str, a: np.ndarray, repeats: int, min_seconds: float):
    """Median seconds of one OpenVINO MatMul model and the kernels its MatMul ran on."""
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mm.xml"
        ov.save_model(model, str(path), compress_to_fp16=False)
        compiled = compile_ir(path, threads, precision_hint=precision_hint, perf_count=True)
    request = compiled.create_infer_request()
    seconds = _median_seconds(lambda: request.infer([a]), repeats, min_seconds)
    kernels = sorted(
        {p.exec_type for p in request.get_profiling_info() if p.node_type.startswith(("MatMul", "FullyConnected"))}
    )
    return seconds, kernels


def _peak_result(kind: str, threads: int, n: int, seconds: dict[str, float], kernels: dict) -> dict:
    ops = 2.0 * n**3
    rates = {k: round(ops / s / 1e9, 1) for k, s in seconds.items()}
    best = max(rates, key=rates.get)
    return {"threads": threads, "n": n, f"{kind}": rates[best], f"{kind}_by": best, "all": rates, "kernels": kernels}


def bf16_matmul_peak(threads: int, n: int = 2048, repeats: int = 10, min_seconds: float = 2.0) -> dict:
    """bf16 matmul throughput (GFLOP/s): OpenVINO MatMul with bf16 precision hint and torch bf16 ``mm``."""
    import openvino as ov
    import openvino.opset13 as ops
    import torch

    _require_bf16("bf16 matmul peak")
    torch.set_num_threads(max(threads, 1))
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    param = ops.parameter([n, n], ov.Type.f32, name="A")
    model = ov.Model([ops.matmul(param, ops.constant(b), False, False)], [param], "mm")
    seconds, kernels = {}, {}
    seconds["openvino"], kernels["openvino"] = _ov_matmul_seconds(model, threads, "bf16", a, repeats, min_seconds)
    ta, tb = torch.from_numpy(a).bfloat16(), torch.from_numpy(b).bfloat16()
    seconds["torch"] = _median_seconds(lambda: torch.mm(ta, tb), repeats, min_seconds)
    result = _peak_result("bf16_gflops", threads, n, seconds, kernels)
    log.info("bf16 matmul limit at %d threads: %s", threads, result)
    return result


def int8_matmul_peak(threads: int, n: int = 2048, repeats: int = 10, min_seconds: float = 2.0) -> dict:
    """int8 matmul throughput (GOP/s): OpenVINO u8 x s8 MatMul (FakeQuantize -> oneDNN int8, VNNI).

    The activations pass a 256-level FakeQuantize and the weights are int8 with a
    dequantising scale; OpenVINO's low-precision transformations turn that into
    an integer MatMul. The kernels it ran on are reported, so a silent fp32
    fallback shows. torch's ``_int_mm`` is timed too where it runs on the CPU.
    """
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    a = rng.uniform(0.0, 1.0, (n, n)).astype(np.float32)
    w8 = rng.integers(-127, 128, (n, n), dtype=np.int8)
    param = ops.parameter([n, n], ov.Type.f32, name="A")
    lo, hi = ops.constant(np.float32(0.0)), ops.constant(np.float32(1.0))
    act = ops.fake_quantize(param, lo, hi, lo, hi, 256)
    weight = ops.multiply(ops.convert(ops.constant(w8), ov.Type.f32), ops.constant(np.full((1, n), 0.01, np.float32)))
    model = ov.Model([ops.matmul(act, weight, False, False)], [param], "mmi")
    seconds, kernels = {}, {}
    seconds["openvino"], kernels["openvino"] = _ov_matmul_seconds(model, threads, "f32", a, repeats, min_seconds)
    with contextlib.suppress(Exception):  # torch._int_mm has no CPU kernel in some builds
        import torch

        torch.set_num_threads(max(threads, 1))
        ta = torch.from_numpy(rng.integers(-127, 128, (n, n), dtype=np.int8))
        tb = torch.from_numpy(w8)
        torch._int_mm(ta, tb)
        seconds["torch_int_mm"] = _median_seconds(lambda: torch._int_mm(ta, tb), repeats, min_seconds)
    result = _peak_result("int8_gops", threads, n, seconds, kernels)
    log.info("int8 matmul limit at %d threads: %s", threads, result)
    return result


def machine_peaks(out_json: Path, threads: int) -> Path:
    """Write the bf16 (where the CPU has it) and int8 matmul limits at ``threads`` threads."""
    os.environ["OMP_NUM_THREADS"] = str(threads)
    result: dict = {"threads": threads, "int8": int8_matmul_peak(threads)}
    if cpu_has_bf16():
        result["bf16"] = bf16_matmul_peak(threads)
    else:
        result["bf16"] = {"absent": "no bf16 instructions on this CPU (OpenVINO OPTIMIZATION_CAPABILITIES)"}
    return write_json(out_json, result)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmship openvino", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="ONNX -> fp32 OpenVINO IR and its census")
    c.add_argument("--onnx", type=Path, required=True)
    q = sub.add_parser("compress", help="NNCF weight compression of an IR")
    q.add_argument("--ir", type=Path, required=True)
    q.add_argument("--variant", choices=tuple(VARIANTS), required=True)
    q.add_argument("--calibration", type=Path, help=".npz with input_ids [n, batch, seq] (data-aware variants)")
    m = sub.add_parser("peaks", help="bf16 and int8 matmul limits")
    m.add_argument("--threads", type=int, default=1)
    for s in (c, q):
        s.add_argument("--census", type=Path)
        s.add_argument("--metrics", type=Path)
    for s in (c, q, m):
        s.add_argument("--out", type=Path, required=True)
        s.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    with log_to(args.log):
        if args.cmd == "convert":
            convert_ir(args.onnx, args.out, census_json=args.census, metrics_json=args.metrics)
        elif args.cmd == "compress":
            calibration = None
            if args.calibration is not None:
                with np.load(args.calibration) as data:
                    calibration = data["input_ids"]
            compress_variant(
                args.ir, args.out, args.variant, calibration, census_json=args.census, metrics_json=args.metrics
            )
        else:
            machine_peaks(args.out, args.threads)


if __name__ == "__main__":
    main()
