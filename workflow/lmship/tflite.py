"""TFLite fp32 / fp16 / int8 from the SavedModel, builtin ops only.

Each precision is its own process (the converter's peak memory, measured per model size in
workflow/lmship/data/stage_costs.json, is the stage's own). The converter may use TFLITE_BUILTINS
only, so a model that would need Flex (SELECT_TF_OPS) ops fails to convert instead of silently
running through the TensorFlow fallback. Next to each ``.tflite`` the stage writes an op census
(builtin / custom / Flex counts per op); any custom or Flex op fails the stage with the ops named.

Precisions: ``fp32``; ``fp16`` (float16 weights, dequantised at load on x86);
``int8`` (dynamic-range quantisation: int8 weights, activations quantised on
the fly by the hybrid kernels).
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import Counter
from pathlib import Path

from . import StageError
from .cli import command
from .decode_graph import GRAPH_FAMILIES
from .files import atomic_output, stage_metrics, write_json
from .gate import FORWARD, Bounds, gate_for
from .logs import captured_stderr

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
_OPS_RE = re.compile(r"Estimated count of arithmetic ops: ([\d.]+) *([KMGT]?) +ops")
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def tflite(
    saved_model: Path,
    out_tflite: Path,
    *,
    precision: str,
    inputs_npz: Path | None = None,
    reference_npy: Path | None = None,
    graph: str = FORWARD,
    hf_dir: Path | None = None,
    host_npz: Path | None = None,
    min_top1: float = 0.0,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
    census_json: Path | None = None,
    metrics_json: Path | None = None,
) -> dict:
    """Convert ``saved_model`` to ``out_tflite`` at ``precision`` with builtin ops only.

    The file is checked against PyTorch as a conversion of ``graph`` (:func:`lmship.gate.gate_for`;
    unchecked for a forward graph given no evaluation set); ``max_rel_diff`` and ``max_mean_kld``
    bound its logits (give them for fp32 only: fp16 and int8 are judged by their quality tier).
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"  # the converter reports its op count at INFO level
    import tensorflow as tf

    gate = gate_for(graph, inputs_npz, reference_npy, hf_dir, host_npz, Bounds(min_top1, max_rel_diff, max_mean_kld))
    if precision not in PRECISIONS:
        raise StageError(f"unknown TFLite precision {precision!r}; expected one of {PRECISIONS}")
    if not (Path(saved_model) / "saved_model.pb").is_file():
        raise StageError(f"{saved_model} is not a SavedModel (no saved_model.pb); rerun the savedmodel stage")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    started = time.monotonic()
    with captured_stderr() as captured:
        try:
            flatbuffer = converter.convert()
        except Exception as exc:
            raise StageError(
                f"TFLite {precision} conversion of {saved_model} with builtin ops only failed: "
                f"{type(exc).__name__}: {str(exc)[:3000]}"
            ) from exc
    seconds = time.monotonic() - started
    del converter
    census = op_census(flatbuffer)
    match = _OPS_RE.search(captured[0] if captured else "")
    converter_ops = float(match.group(1)) * _UNITS[match.group(2)] if match else None
    if census_json is not None:
        write_json(census_json, census)
    bad = {**census["flex"], **census["custom"]}
    if bad:
        raise StageError(f"TFLite {precision} model needs non-builtin ops {bad}; builtins only are allowed")
    with atomic_output(Path(out_tflite)) as tmp:
        tmp.write_bytes(flatbuffer)
        del flatbuffer
        check = gate("litert", tmp, stage=f"tflite_{precision}") if gate is not None else None
    return stage_metrics(
        metrics_json,
        out_tflite,
        started,
        graph=graph,
        precision=precision,
        convert_seconds=round(seconds, 1),
        converter_arithmetic_ops=converter_ops,
        ops_total=census["total"],
        tensorflow_version=tf.__version__,
        vs_pytorch=check,
    )


def op_census(flatbuffer: bytes) -> dict:
    """Count the operators of a TFLite flatbuffer: builtin, custom and Flex, per op name."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAsModel(flatbuffer, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        custom = code.CustomCode()
        codes.append(("custom", custom.decode()) if custom else ("builtin", names.get(builtin, str(builtin))))
    counts: dict[str, Counter] = {"builtin": Counter(), "custom": Counter(), "flex": Counter()}
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for o in range(graph.OperatorsLength()):
            kind, name = codes[graph.Operators(o).OpcodeIndex()]
            if kind == "custom" and name.startswith("Flex"):
                kind = "flex"
            counts[kind][name] += 1
    graph = model.Subgraphs(0)
    io = {}
    for label, idx in (("input", graph.Inputs(0)), ("output", graph.Outputs(0))):
        tensor = graph.Tensors(idx)
        io[label] = {"shape": tensor.ShapeAsNumpy().tolist(), "type": _tensor_type(schema, tensor.Type())}
    return {
        "total": sum(sum(c.values()) for c in counts.values()),
        "counts": {k: sum(c.values()) for k, c in counts.items()},
        "builtin": dict(counts["builtin"].most_common()),
        "custom": dict(counts["custom"].most_common()),
        "flex": dict(counts["flex"].most_common()),
        "subgraphs": model.SubgraphsLength(),
        **io,
    }


def _tensor_type(schema, code: int) -> str:
    for k, v in vars(schema.TensorType).items():
        if v == code and not k.startswith("_"):
            return k.lower()
    return str(code)


#: ``python -m lmship tflite``: its options are the function's parameters.
main = command(tflite, choices={"precision": PRECISIONS, "graph": GRAPH_FAMILIES})


if __name__ == "__main__":
    main()
