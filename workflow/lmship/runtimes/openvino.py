"""OpenVINO (CPU plugin): the IRs (and ONNX files) of the forward and generation graphs.

Each compiled model gets the latency performance mode, the inference precision hint (``f32``, or
``bf16`` on a CPU with AVX-512 BF16 / AMX), ``threads`` as ``INFERENCE_NUM_THREADS`` read back from
the compiled model, and optionally the CPU plugin's ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` (OpenVINO's
default quantises the activations of compressed-weight MatMuls to int8 per group of 32; 0 turns it
off). An IR may carry that runtime option itself (the exact grid does).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import StageError, ThreadsRefusedError
from . import Session, require_bf16

NAME = "openvino"
#: The package this runtime imports (checked before any job: a runtime not installed is not applicable).
IMPORTS = "openvino"
DISTRIBUTION = "openvino"
GENERATES = "graphs"
PRECISION_HINTS = ("f32", "bf16")
#: OpenVINO releases whose CPU plugin dies of SIGFPE in ``compile_model`` when asked for a language model
#: in bf16 on one thread of a CPU with AMX (seen with 2026.4.1 on an Intel Xeon with AMX: every forward IR,
#: with or without NUM_STREAMS, pinning or taskset; 2 threads and the default compile; a lone bf16 MatMul
#: compiles, and so do the rank-2 prefill / decode graphs). :func:`open` refuses it with a reason
#: instead of crashing.
BF16_ONE_THREAD_SIGFPE = ("2026.4.",)


def version() -> str:
    import openvino as ov

    return ov.__version__


def core():
    import openvino as ov

    return ov.Core()


def compile_ir(
    artifact: Path,
    threads: int,
    *,
    precision_hint: str = "f32",
    dynamic_quantization: int | None = None,
    perf_count: bool = False,
):
    """Compile the IR (or ONNX) ``artifact`` for the CPU with the given threads and precision hint."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    if precision_hint not in PRECISION_HINTS:
        raise StageError(f"unknown OpenVINO precision hint {precision_hint!r}; expected one of {PRECISION_HINTS}")
    if precision_hint == "bf16":
        require_bf16(f"OpenVINO {artifact}")
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
        return core().compile_model(str(artifact), "CPU", config)
    except Exception as exc:
        raise StageError(f"OpenVINO cannot compile {artifact} for the CPU: {type(exc).__name__}: {exc}") from exc


def _refuse_known_crash(precision_hint: str, threads: int) -> None:
    """Refuse the bf16 compile that kills this OpenVINO release (:data:`BF16_ONE_THREAD_SIGFPE`)."""
    from ..host import cpu_flags

    affected = version().startswith(BF16_ONE_THREAD_SIGFPE) and "amx_bf16" in cpu_flags()
    if precision_hint == "bf16" and threads == 1 and affected:
        raise ThreadsRefusedError(
            f"OpenVINO {version().split('-')[0]} crashes (SIGFPE in compile_model) compiling a bf16 model for one "
            "thread on a CPU with AMX; its bf16 rows are measured at 2 threads and more on this machine",
            min_threads=2,
        )


def threads_of(compiled) -> int:
    import openvino.properties as props

    return int(compiled.get_property(props.inference_num_threads))


def open(
    artifact: Path, threads: int, *, precision_hint: str = "f32", dynamic_quantization: int | None = None
) -> Session:
    _refuse_known_crash(precision_hint, threads)
    compiled = compile_ir(artifact, threads, precision_hint=precision_hint, dynamic_quantization=dynamic_quantization)
    request = compiled.create_infer_request()
    first = compiled.inputs[0].get_partial_shape()
    shape = tuple(first.to_shape()) if first.is_static else None

    def run(input_ids: np.ndarray) -> np.ndarray:
        if shape is not None and tuple(input_ids.shape) != shape:
            raise StageError(f"{artifact} takes input shape {shape}, got {input_ids.shape}")
        request.infer([np.ascontiguousarray(input_ids, dtype=np.int64)])
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)

    label = NAME if precision_hint == "f32" else f"{NAME}-{precision_hint}"
    return Session(label, version(), threads, run, threads_of(compiled), keepalive=compiled)


def open_graph(path: Path, threads: int, *, precision_hint: str = "f32"):
    """A generation graph compiled for the CPU; inputs are shared with the host's arrays, not copied."""
    compiled = compile_ir(path, threads, precision_hint=precision_hint)
    request = compiled.create_infer_request()
    outs = [(o, o.get_any_name()) for o in compiled.outputs]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = request.infer(feeds, share_inputs=True)
        return {name: got[o] for o, name in outs}

    run.input_names = [i.get_any_name() for i in compiled.inputs]
    run.keepalive = compiled
    return run
