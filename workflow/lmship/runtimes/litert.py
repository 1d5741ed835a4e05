"""LiteRT (``ai_edge_litert``'s interpreter, XNNPACK): the TFLite files of the forward and generation graphs.

Threads: the interpreter's ``num_threads``. LiteRT has no getter, so the threads its pool starts
are counted (``/proc/self/task``: the calling thread plus the pool's workers). A generation graph
runs through its ``serving_default`` signature, inputs and outputs mapped by name
(``get_input_details()`` lists them in scrambled order, and every cache has the same shape).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import StageError
from . import Session, dist_version, os_threads

NAME = "litert"
#: The package this runtime imports (checked before any job: a runtime not installed is not applicable).
IMPORTS = "ai_edge_litert"
DISTRIBUTION = "ai-edge-litert"
GENERATES = "graphs"
SIGNATURE = "serving_default"


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TensorFlow's bundled interpreter
        import tensorflow as tf

        return tf.lite.Interpreter
    return Interpreter


def version() -> str:
    try:
        import ai_edge_litert
    except ImportError:
        import tensorflow as tf

        return f"tf.lite {tf.__version__}"
    return getattr(ai_edge_litert, "__version__", None) or dist_version("ai-edge-litert")


def _interpreter(path: Path, threads: int):
    try:
        return _interpreter_class()(model_path=str(path), num_threads=threads if threads > 0 else None)
    except Exception as exc:
        raise StageError(f"the TFLite interpreter cannot load {path}: {type(exc).__name__}: {exc}") from exc


def open(artifact: Path, threads: int) -> Session:
    before = os_threads()
    interpreter = _interpreter(artifact, threads)
    try:
        interpreter.allocate_tensors()
    except Exception as exc:
        raise StageError(f"the TFLite interpreter cannot allocate {artifact}: {type(exc).__name__}: {exc}") from exc
    after = os_threads()
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

    return Session(NAME, version(), threads, run, in_effect, keepalive=interpreter)


def open_graph(path: Path, threads: int):
    interpreter = _interpreter(path, threads)
    try:
        signatures = interpreter.get_signature_list()
        if SIGNATURE not in signatures:
            raise StageError(f"{path} has no {SIGNATURE} signature (found {sorted(signatures)})")
        runner = interpreter.get_signature_runner(SIGNATURE)
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"the TFLite interpreter cannot load {path}: {type(exc).__name__}: {exc}") from exc
    names = set(signatures[SIGNATURE]["inputs"])

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(feeds) ^ names
        if missing:
            raise StageError(f"{path}: signature inputs {sorted(names)[:8]}... do not match feeds {sorted(missing)}")
        return runner(**feeds)

    run.input_names = sorted(names)
    run.keepalive = interpreter
    return run
