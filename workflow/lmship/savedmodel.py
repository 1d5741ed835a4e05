"""Convert the simplified ONNX model to a TensorFlow SavedModel with onnx2tf.

onnx2tf's own TFLite step is kept out of this process (converting to TFLite in the same process as
the SavedModel ran out of memory on a 24 GB machine; each stage's measured peak is in
workflow/lmship/data/stage_costs.json): onnx2tf builds the Keras model
(``disable_model_save=True``), and this stage writes the SavedModel itself with a Keras export
archive (the path onnx2tf takes with ``-osd``), with one ``serving_default`` signature.
The Keras model is checked against the PyTorch reference before saving.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import StageError
from .cli import FP32_GATE, command
from .decode_graph import GRAPH_FAMILIES
from .files import atomic_output, load_onnx, stage_metrics
from .gate import FORWARD, Bounds, gate_for
from .logs import captured_stderr, first_error_line

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


@contextmanager
def _weight_matmul_validation_skipped(enabled: bool) -> Iterator[None]:
    """Skip onnx2tf's per-MatMul layout search for MatMuls by a constant weight matrix.

    For every MatMul, onnx2tf rebuilds the Keras graph up to that node and runs
    it on dummy data to choose input transpositions: quadratic in the model's
    depth, and most of the SavedModel stage's time on a 30-layer LLM. For a
    MatMul whose second input is a constant weight the untransposed product is
    the ONNX semantics, so the search is skipped for those; likewise for a
    MatMul of two rank-2 tensors (the generation graphs'), which onnx2tf never
    transposes (attention MatMuls of the 3-D forward graph keep the search). The whole model is still checked
    against PyTorch afterwards; set ``savedmodel: {fast_weight_matmul: false}``
    in the config to turn this off.
    """
    module = importlib.import_module("onnx2tf.ops.MatMul") if enabled else None
    original = getattr(module, "acquisition_of_validation_data", None)
    if not enabled or original is None:
        if enabled:
            log.warning("onnx2tf.ops.MatMul has no acquisition_of_validation_data: running onnx2tf unchanged")
        yield
        return

    def acquisition(**kwargs):
        a, b = kwargs.get("input_tensor_1"), kwargs.get("input_tensor_2")
        if isinstance(b, np.ndarray) and not isinstance(a, np.ndarray):
            return None, None, None
        if _rank(a) <= 2 and _rank(b) <= 2:  # no layout to choose: onnx2tf transposes rank >= 3 only
            return None, None, None
        return original(**kwargs)

    module.acquisition_of_validation_data = acquisition
    try:
        yield
    finally:
        module.acquisition_of_validation_data = original


def _rank(tensor) -> int:
    """Rank of a numpy array or Keras / TF tensor (large when unknown, so the search is kept)."""
    shape = getattr(tensor, "shape", None)
    try:
        return len(shape)
    except TypeError:
        return 99


def savedmodel(
    in_onnx: Path,
    inputs_npz: Path,
    reference_npy: Path | None,
    out_dir: Path,
    *,
    graph: str = FORWARD,
    hf_dir: Path | None = None,
    host_npz: Path | None = None,
    min_top1: float,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
    onnx2tf_options: dict | None = None,
    fast_weight_matmul: bool = True,
    metrics_json: Path | None = None,
) -> dict:
    """Build the Keras model of ``graph`` with onnx2tf, check it against PyTorch (:func:`lmship.gate.gate_for`),
    save it as a SavedModel at ``out_dir`` with one ``serving_default`` signature.

    The forward graph takes ``input_ids``; a generation graph's signature takes the ONNX input
    names and returns a dict keyed by its output names, so TFLite's signature runner maps both
    by name (``get_input_details()`` order is scrambled and every cache has the same shape).
    ``fast_weight_matmul`` skips onnx2tf's layout search for weight MatMuls
    (see :func:`_weight_matmul_validation_skipped`).
    """
    import onnx2tf
    import tensorflow as tf

    gate = gate_for(graph, inputs_npz, reference_npy, hf_dir, host_npz, Bounds(min_top1, max_rel_diff, max_mean_kld))
    proto = load_onnx(in_onnx)  # a clear error for a truncated / corrupt file, before onnx2tf's own
    in_names = [i.name for i in proto.graph.input]
    in_shapes = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    out_names = [o.name for o in proto.graph.output]
    del proto
    options = {
        "not_use_onnxsim": True,  # the input is already simplified (simplify_onnx)
        "verbosity": "warn",
        **(onnx2tf_options or {}),
    }
    started = time.monotonic()
    with atomic_output(Path(out_dir)) as tmp:
        model = _keras_model(in_onnx, tmp.with_name(tmp.name + "-onnx2tf"), options, fast_weight_matmul)
        convert_s = time.monotonic() - started
        if graph == FORWARD:
            specs = [tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs]
            if len(specs) != 1:
                raise StageError(f"expected one model input (input_ids), onnx2tf produced {len(specs)}")
            run, serve = _runner(model, specs[0]), lambda x: model(x)
        else:
            specs = _named_specs(model, in_onnx, in_names, in_shapes, out_names)
            run, serve = _keras_runner(model, specs, out_names), _named_outputs(model, out_names)
        check = gate("keras", out_dir, stage="savedmodel", run=run) if gate is not None else None
        _write_savedmodel(model, specs, serve, tmp)
    return stage_metrics(
        metrics_json,
        out_dir,
        started,
        graph=graph,
        onnx2tf_seconds=round(convert_s, 1),
        onnx2tf_version=onnx2tf.__version__,
        tensorflow_version=tf.__version__,
        onnx2tf_options=options,
        fast_weight_matmul=fast_weight_matmul,
        inputs=[{"name": s.name, "shape": [int(d) for d in s.shape], "dtype": s.dtype.name} for s in specs],
        vs_pytorch=check,
    )


def _named_specs(model, in_onnx: Path, in_names: list[str], in_shapes: list[list[int]], out_names: list[str]):
    """The Keras model's input specs under the ONNX input names, checked against the ONNX graph."""
    import tensorflow as tf

    if len(model.inputs) != len(in_names) or len(model.outputs) != len(out_names):
        raise StageError(
            f"onnx2tf made {len(model.inputs)} inputs / {len(model.outputs)} outputs of {in_onnx}; "
            f"the ONNX graph has {len(in_names)} / {len(out_names)}"
        )
    specs = [tf.TensorSpec(t.shape, t.dtype, name) for name, t in zip(in_names, model.inputs, strict=True)]
    if [list(s.shape) for s in specs] != in_shapes:
        raise StageError(
            f"onnx2tf changed the input shapes of {in_onnx}: {[list(s.shape) for s in specs][:5]}... "
            f"instead of {in_shapes[:5]}..."
        )
    return specs


def _named_outputs(model, out_names: list[str]):
    """The serving function of a multi-output graph: a dict keyed by the ONNX output names."""
    import tensorflow as tf

    def serve(*xs):
        outs = model(list(xs))
        outs = outs if isinstance(outs, list | tuple) else [outs]
        return {name: tf.identity(o, name=name) for name, o in zip(out_names, outs, strict=True)}

    return serve


def _keras_model(in_onnx: Path, work: Path, options: dict, fast_weight_matmul: bool):
    """Run onnx2tf on a private copy of ``in_onnx`` in the scratch folder ``work``; return the Keras model."""
    import onnx2tf

    log.info("onnx2tf: converting %s with %s (fast weight MatMul: %s)", in_onnx, options, fast_weight_matmul)
    work.mkdir()
    # onnx2tf rewrites its input file in place (op names, inferred shapes): give it a
    # private copy so the upstream artifact is never modified (nor its mtime).
    private = work / "input.onnx"
    shutil.copyfile(in_onnx, private)
    try:
        with _weight_matmul_validation_skipped(fast_weight_matmul), captured_stderr(1, 2) as printed:
            model = onnx2tf.convert(
                input_onnx_file_path=str(private),
                output_folder_path=str(work),
                disable_model_save=True,
                **options,
            )
    except SystemExit as exc:  # onnx2tf reports some failures with sys.exit(1), after printing an ERROR line
        said = first_error_line(printed[0] if printed else "")
        raise StageError(
            f"onnx2tf failed on {in_onnx} (exit {exc.code}): {said or 'see the messages above in the log'}"
        ) from exc
    except Exception as exc:
        raise StageError(f"onnx2tf failed on {in_onnx}: {type(exc).__name__}: {str(exc)[:2000]}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if model is None:
        raise StageError(f"onnx2tf returned no model for {in_onnx}")
    return model


def _runner(model, spec):
    """``run(input_ids) -> logits`` of the Keras model, traced once for ``spec``."""
    import tensorflow as tf

    @tf.function(input_signature=[spec])
    def serve(x):
        return model(x)

    def run(sample: np.ndarray) -> np.ndarray:
        return np.asarray(serve(tf.constant(sample.astype(spec.dtype.as_numpy_dtype))))

    return run


def _write_savedmodel(model, specs: list, serve, folder: Path) -> None:
    """Save ``model`` at ``folder`` with a Keras export archive and one ``serving_default`` signature."""
    import tf_keras

    archive = tf_keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=specs)
    archive.write_out(str(folder))
    if not (folder / "saved_model.pb").is_file():
        raise StageError(f"the SavedModel at {folder} has no saved_model.pb")


def _keras_runner(model, specs: list, out_names: list[str]):
    """``run(feeds) -> outputs`` (by name) of the Keras model, traced once for ``specs``."""
    import tensorflow as tf

    @tf.function(input_signature=specs)
    def serve(*xs):
        return model(list(xs))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [tf.constant(np.asarray(feeds[s.name]).astype(s.dtype.as_numpy_dtype)) for s in specs]
        outs = serve(*args)
        outs = outs if isinstance(outs, list | tuple) else [outs]
        return {name: np.asarray(o) for name, o in zip(out_names, outs, strict=True)}

    return run


#: ``python -m lmship savedmodel``: its options are the function's parameters.
main = command(
    savedmodel,
    config={
        "onnx2tf_options": ("savedmodel", "onnx2tf"),
        "fast_weight_matmul": ("savedmodel", "fast_weight_matmul"),
        **FP32_GATE,
    },
    choices={"graph": GRAPH_FAMILIES},
)


if __name__ == "__main__":
    main()
