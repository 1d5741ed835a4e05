"""The OpenVINO IR (rule ``openvino_ir``): ONNX -> OpenVINO IR (``.xml`` + ``.bin``) with fp32 weights
(``compress_to_fp16=False``: the fp32 IR must be the fp32 model), checked against PyTorch, plus an
op / precision census (op types and counts, weight element types and bytes). Its compressed forms are
:mod:`lmship.compress_openvino`; running an IR is the runtime's part (:mod:`lmship.runtimes.openvino`).
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path

from . import StageError
from .cli import FP32_GATE, command
from .decode_graph import GRAPH_FAMILIES
from .files import atomic_output, size_bytes, write_json
from .gate import FORWARD, Bounds, gate_for
from .logs import peak_rss_mb


def _ir_files(xml: Path) -> tuple[Path, Path]:
    xml = Path(xml)
    return xml, xml.with_suffix(".bin")


def save_ir(model, out_xml: Path, *, compress_to_fp16: bool, check=None) -> Path:
    """Save ``model`` as ``out_xml`` + ``.bin`` so that a crash never leaves a half-written pair.

    ``check(xml)``, if given, runs on the written IR before it takes its place (it raises to refuse it).
    """
    import openvino as ov

    out_xml, out_bin = _ir_files(out_xml)
    out_xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_xml.parent, prefix=f".{out_xml.stem}.") as tmp_dir:
        tmp_xml = Path(tmp_dir) / out_xml.name
        ov.save_model(model, str(tmp_xml), compress_to_fp16=compress_to_fp16)
        if check is not None:
            check(tmp_xml)
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


def openvino_ir(
    onnx_path: Path,
    out_xml: Path,
    *,
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
) -> Path:
    """Convert ``onnx_path`` (the ``graph``) to an fp32 OpenVINO IR at ``out_xml`` (+ ``.bin``); write its census.

    The IR is run at f32 and refused (nothing written) if it misses its gate against PyTorch
    (:func:`lmship.gate.gate_for`: the evaluation set for the forward graph, PyTorch's generation for
    a prefill / decode graph; unchecked for a forward graph given no evaluation set).
    """
    import openvino as ov

    gate = gate_for(graph, inputs_npz, reference_npy, hf_dir, host_npz, Bounds(min_top1, max_rel_diff, max_mean_kld))
    checked: dict = {}

    def check(xml: Path) -> None:
        if gate is not None:
            checked.update(gate("openvino", xml, stage="openvino_ir"))

    if not Path(onnx_path).is_file():
        raise StageError(f"{onnx_path} does not exist; run the export stage first")
    started = time.monotonic()
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:
        raise StageError(f"OpenVINO {ov.__version__} cannot convert {onnx_path}: {type(exc).__name__}: {exc}") from exc
    save_ir(model, out_xml, compress_to_fp16=False, check=check)
    seconds = time.monotonic() - started
    info = census(model)
    if census_json is not None:
        write_json(census_json, info)
    if metrics_json is not None:
        write_json(
            metrics_json,
            ir_metrics(out_xml, seconds, info, graph=graph, openvino_version=ov.__version__, vs_pytorch=checked),
        )
    return Path(out_xml)


def ir_metrics(out_xml: Path, seconds: float, info: dict, **extra) -> dict:
    return {
        "artifact": str(out_xml),
        "size_mb": round(size_bytes(out_xml) / 1e6, 1),  # the .xml and its .bin
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "ops_total": info["total"],
        "weights": info["weights"],
        **extra,
    }


#: ``python -m lmship openvino_ir``: its options are the function's parameters.
main = command(
    openvino_ir,
    config={
        **FP32_GATE,
    },
    choices={"graph": GRAPH_FAMILIES},
)
