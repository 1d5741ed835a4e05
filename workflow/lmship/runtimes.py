"""One interface over every runtime: open an artifact, run token ids, get logits.

``open_backend(runtime, artifact, threads)`` returns a :class:`Session` whose
``run(input_ids)`` maps ``int64 [batch, seq]`` to ``float32 [batch, seq, vocab]``.
Threads are set explicitly in every runtime (0 keeps the runtime's default), and
each session reads back the intra-op threads the runtime actually uses
(``Session.threads_in_effect``): PyTorch ``torch.get_num_threads()``, ONNX Runtime
the session's own ``intra_op_num_threads`` (0: its default), OpenVINO the compiled
model's ``INFERENCE_NUM_THREADS``; LiteRT has no getter, so the threads
its interpreter starts are counted (Linux ``/proc/self/task``: the calling thread
plus the pool's workers); ``None`` where nothing can be read back.
Imports are lazy, so a process only loads the runtime it uses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import StageError
from .backends import RUNTIMES


@dataclass
class Session:
    runtime: str
    version: str
    threads: int
    run: Callable[[np.ndarray], np.ndarray]
    threads_in_effect: int | None = None


def open_backend(runtime: str, artifact: Path, threads: int) -> Session:
    """Load ``artifact`` in ``runtime`` with ``threads`` intra-op threads."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise StageError(f"artifact {artifact} does not exist")
    if runtime == "pytorch":
        return _torch(artifact, threads, int8=False)
    if runtime == "pytorch_int8":
        return _torch(artifact, threads, int8=True)
    if runtime == "ort":
        return _ort(artifact, threads)
    if runtime == "tflite":
        return _tflite(artifact, threads)
    if runtime in ("openvino", "openvino_bf16", "pytorch_bf16"):
        from . import openvino

        if runtime == "pytorch_bf16":
            return openvino.open_torch_bf16(artifact, threads)
        return openvino.open_openvino(artifact, threads, precision_hint="bf16" if runtime == "openvino_bf16" else "f32")
    raise StageError(f"unknown runtime {runtime!r}; expected one of {RUNTIMES}")


def _torch(artifact: Path, threads: int, *, int8: bool) -> Session:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # already set in this process
            torch.set_num_interop_threads(1)
    if int8:
        from .quantize_pytorch import load_quantized

        model = load_quantized(artifact)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(artifact, dtype=torch.float32)
    model.eval()

    def run(input_ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = model(input_ids=torch.from_numpy(np.ascontiguousarray(input_ids)), use_cache=False)
        return out.logits.float().numpy()

    return Session("torch", torch.__version__, threads, run, torch.get_num_threads())


def ort_session_options(threads: int):
    """ONNX Runtime options of every session here: full graph optimisation, ``threads`` intra-op, 1 inter-op."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    if threads > 0:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def _ort(artifact: Path, threads: int) -> Session:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(artifact), ort_session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise StageError(f"ONNX Runtime cannot load {artifact}: {type(exc).__name__}: {exc}") from exc
    name = session.get_inputs()[0].name

    def run(input_ids: np.ndarray) -> np.ndarray:
        return session.run(None, {name: input_ids.astype(np.int64)})[0]

    in_effect = session.get_session_options().intra_op_num_threads  # 0: ORT's default (one per core)
    return Session("onnxruntime", ort.__version__, threads, run, in_effect)


def _tflite(artifact: Path, threads: int) -> Session:
    try:
        import ai_edge_litert
        from ai_edge_litert.interpreter import Interpreter

        version = getattr(ai_edge_litert, "__version__", None) or _dist_version("ai-edge-litert")
        name = "litert"
    except ImportError:  # TensorFlow's bundled interpreter
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
        version = tf.__version__
        name = "tf.lite"
    before = _os_threads()
    try:
        interpreter = Interpreter(model_path=str(artifact), num_threads=threads if threads > 0 else None)
        interpreter.allocate_tensors()
    except Exception as exc:
        raise StageError(f"the TFLite interpreter cannot load {artifact}: {type(exc).__name__}: {exc}") from exc
    after = _os_threads()
    # the interpreter's pool (XNNPACK's pthreadpool) starts threads - 1 workers; the caller is the last one
    in_effect = 1 + after - before if before is not None and after is not None else None
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]

    def run(input_ids: np.ndarray) -> np.ndarray:
        if tuple(input_ids.shape) != tuple(inp["shape"]):
            raise StageError(f"{artifact} takes input shape {tuple(inp['shape'])}, got {input_ids.shape}")
        interpreter.set_tensor(inp["index"], input_ids.astype(inp["dtype"]))
        interpreter.invoke()
        return interpreter.get_tensor(out["index"])

    return Session(name, version, threads, run, in_effect)


def _os_threads() -> int | None:
    """Threads of this process (Linux); None where /proc is missing."""
    try:
        return sum(1 for _ in Path("/proc/self/task").iterdir())
    except OSError:
        return None


def _dist_version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
