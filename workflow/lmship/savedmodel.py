"""Stage 5: convert the simplified ONNX model to a TensorFlow SavedModel with onnx2tf.

onnx2tf's own TFLite step is kept out of this process (converting to TFLite
in the same process as the SavedModel was OOM-killed at ~24 GB on the 135M
model): onnx2tf builds the Keras model (``disable_model_save=True``), and
this stage writes the SavedModel itself with a Keras export archive (the
path onnx2tf takes with ``-osd``), with one ``serving_default`` signature.
The Keras model is checked against the PyTorch reference before saving.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import StageError
from .evalset import load_inputs
from .files import atomic_output, size_bytes, write_json
from .logs import log_to, peak_rss_mb
from .validate import add_checked_stage_arguments, check_agreement, run_all

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


@contextmanager
def _weight_matmul_validation_skipped(enabled: bool) -> Iterator[None]:
    """Skip onnx2tf's per-MatMul layout search for MatMuls by a constant weight matrix.

    For every MatMul, onnx2tf rebuilds the Keras graph up to that node and runs
    it on dummy data to choose input transpositions: quadratic in the model's
    depth, and most of the SavedModel stage's time on a 30-layer LLM. For a
    MatMul whose second input is a constant weight the untransposed product is
    the ONNX semantics, so the search is skipped for those only (attention
    MatMuls between activations keep it). The whole model is still checked
    against PyTorch afterwards; set ``onnx2tf_fast_weight_matmul: false`` to
    turn this off.
    """
    module = importlib.import_module("onnx2tf.ops.MatMul") if enabled else None
    original = getattr(module, "acquisition_of_validation_data", None)
    if not enabled or original is None:
        if enabled:
            log.warning("onnx2tf.ops.MatMul has no acquisition_of_validation_data: running onnx2tf unchanged")
        yield
        return

    def acquisition(**kwargs):
        if isinstance(kwargs.get("input_tensor_2"), np.ndarray) and not isinstance(
            kwargs.get("input_tensor_1"), np.ndarray
        ):
            return None, None, None
        return original(**kwargs)

    module.acquisition_of_validation_data = acquisition
    try:
        yield
    finally:
        module.acquisition_of_validation_data = original


def onnx_to_savedmodel(
    in_onnx: Path,
    inputs_npz: Path,
    reference_npy: Path,
    out_dir: Path,
    *,
    min_top1: float,
    onnx2tf_options: dict | None = None,
    fast_weight_matmul: bool = True,
    metrics_json: Path | None = None,
) -> dict:
    """Build the Keras model with onnx2tf and save it as a SavedModel at ``out_dir``.

    ``fast_weight_matmul`` skips onnx2tf's layout search for weight MatMuls
    (see :func:`_weight_matmul_validation_skipped`).
    """
    import onnx2tf
    import tensorflow as tf
    import tf_keras

    from .simplify import load_onnx

    load_onnx(in_onnx)  # a clear error for a truncated / corrupt file, before onnx2tf's own
    options = {
        "not_use_onnxsim": True,  # the input is already simplified (stage 4)
        "verbosity": "warn",
        **(onnx2tf_options or {}),
    }
    started = time.monotonic()
    log.info("onnx2tf: converting %s with %s (fast weight MatMul: %s)", in_onnx, options, fast_weight_matmul)
    with atomic_output(Path(out_dir)) as tmp:
        work = tmp.with_name(tmp.name + "-onnx2tf")
        work.mkdir()
        # onnx2tf rewrites its input file in place (op names, inferred shapes): give it a
        # private copy so the upstream artifact is never modified (nor its mtime).
        private = work / "input.onnx"
        shutil.copyfile(in_onnx, private)
        try:
            with _weight_matmul_validation_skipped(fast_weight_matmul):
                model = onnx2tf.convert(
                    input_onnx_file_path=str(private),
                    output_folder_path=str(work),
                    disable_model_save=True,
                    **options,
                )
        except SystemExit as exc:  # onnx2tf reports some failures with sys.exit(1)
            raise StageError(f"onnx2tf failed on {in_onnx} (exit {exc.code}); see the messages above") from exc
        except Exception as exc:
            raise StageError(f"onnx2tf failed on {in_onnx}: {type(exc).__name__}: {str(exc)[:2000]}") from exc
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if model is None:
            raise StageError(f"onnx2tf returned no model for {in_onnx}")
        convert_s = time.monotonic() - started

        input_ids, is_text = load_inputs(inputs_npz)
        specs = [tf.TensorSpec(t.shape, t.dtype, t.name) for t in model.inputs]
        if len(specs) != 1:
            raise StageError(f"expected one model input (input_ids), onnx2tf produced {len(specs)}")

        @tf.function(input_signature=specs)
        def serve(x):
            return model(x)

        def run(sample: np.ndarray) -> np.ndarray:
            return np.asarray(serve(tf.constant(sample.astype(specs[0].dtype.as_numpy_dtype))))

        reference = np.load(reference_npy, mmap_mode="r")
        check = check_agreement(
            reference, run_all(run, input_ids), is_text, min_top1=min_top1, stage="savedmodel", artifact=out_dir
        )
        archive = tf_keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name=SIGNATURE, fn=lambda x: model(x), input_signature=specs)
        archive.write_out(str(tmp))
        if not (tmp / "saved_model.pb").is_file():
            raise StageError(f"the SavedModel at {tmp} has no saved_model.pb")
    metrics = {
        "artifact": str(out_dir),
        "size_mb": round(size_bytes(out_dir) / 1e6, 1),
        "onnx2tf_seconds": round(convert_s, 1),
        "total_seconds": round(time.monotonic() - started, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "onnx2tf_version": onnx2tf.__version__,
        "tensorflow_version": tf.__version__,
        "onnx2tf_options": options,
        "fast_weight_matmul": fast_weight_matmul,
        "input": {"shape": [int(d) for d in specs[0].shape], "dtype": specs[0].dtype.name},
        "vs_pytorch": check,
    }
    if metrics_json is not None:
        write_json(metrics_json, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmship savedmodel", description=__doc__.split("\n\n")[0])
    add_checked_stage_arguments(parser, "--onnx", "simplified ONNX model")
    parser.add_argument("--onnx2tf", default="{}", help="extra onnx2tf.convert() arguments as YAML/JSON")
    parser.add_argument("--no-fast-weight-matmul", action="store_true", help="keep onnx2tf's full MatMul search")
    args = parser.parse_args(argv)
    import yaml

    with log_to(args.log):
        onnx_to_savedmodel(
            args.onnx,
            args.inputs,
            args.reference,
            args.out,
            min_top1=args.min_top1,
            onnx2tf_options=yaml.safe_load(args.onnx2tf),
            fast_weight_matmul=not args.no_fast_weight_matmul,
            metrics_json=args.metrics,
        )


if __name__ == "__main__":
    main()
