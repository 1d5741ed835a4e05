"""ONNX Runtime (CPU execution provider): the ONNX files of the forward and generation graphs.

Every session gets the same options (:func:`session_options`): full graph optimisation, sequential
execution, ``threads`` intra-op threads and one inter-op thread, read back from the session
(``intra_op_num_threads``; 0 is ORT's default, one thread per core). A generation graph runs over
IOBinding (:func:`bound_runner`): the host's K/V cache is read in place and every output lands in
a buffer allocated once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import StageError
from . import Session

NAME = "onnxruntime"
#: The package this runtime imports (checked before any job: a runtime not installed is not applicable).
IMPORTS = "onnxruntime"
DISTRIBUTION = "onnxruntime"
GENERATES = "graphs"
_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}


def version() -> str:
    import onnxruntime as ort

    return ort.__version__


def session_options(threads: int):
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


def session(path: Path, threads: int):
    """An ONNX Runtime CPU session of ``path`` with :func:`session_options`."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise StageError(f"ONNX Runtime cannot load {path}: {type(exc).__name__}: {exc}") from exc


def open(artifact: Path, threads: int) -> Session:
    sess = session(artifact, threads)
    name = sess.get_inputs()[0].name

    def run(input_ids: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: input_ids.astype(np.int64)})[0]

    in_effect = sess.get_session_options().intra_op_num_threads  # 0: ORT's default (one per core)
    return Session(NAME, version(), threads, run, in_effect, keepalive=sess)


def open_graph(path: Path, threads: int):
    sess = session(path, threads)
    run = bound_runner(sess)
    run.input_names = [i.name for i in sess.get_inputs()]
    return run


def bound_runner(sess):
    """``feeds -> outputs`` over ONNX Runtime's IOBinding: inputs bound where they lie, outputs preallocated.

    An input is bound once per array object (the host's K/V cache and mask stay bound from step
    to step and are read in place), and every output is written into a buffer allocated once: no
    copy on the way in or out. The returned arrays are those buffers, overwritten by the next
    call. A graph with a dynamic output shape or an output of another type runs through ``run``.
    """
    outputs = sess.get_outputs()
    if not all(o.type in _DTYPES and all(isinstance(s, int) for s in o.shape) for o in outputs):
        names = [o.name for o in outputs]

        def run_plain(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(names, sess.run(None, feeds), strict=True))

        run_plain.keepalive = sess
        return run_plain
    dtypes = {i.name: _DTYPES.get(i.type) for i in sess.get_inputs()}
    binding = sess.io_binding()
    results = {o.name: np.empty(o.shape, _DTYPES[o.type]) for o in outputs}
    for name, buf in results.items():
        binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
    bound: dict[str, np.ndarray] = {}  # what each input is bound to, kept alive while bound

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            if bound.get(name) is value:
                continue
            if name not in dtypes:
                raise StageError(f"the graph has no input {name!r} (inputs: {sorted(dtypes)[:8]}...)")
            # a converted copy is bound anew on every call: the caller's own array may change
            array = np.ascontiguousarray(value, dtype=dtypes[name])
            binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            bound[name] = array
        sess.run_with_iobinding(binding)
        return results

    run.keepalive = (sess, binding, bound)
    return run
