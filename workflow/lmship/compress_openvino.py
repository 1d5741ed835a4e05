"""NNCF weight compression of the OpenVINO IR (rule ``compress_openvino``, :data:`COMPRESSIONS`).

int8 / int4 weights, per channel or in groups, data-free or data-aware (AWQ + scale estimation on
calibration token windows); or ``q4_exact`` (:func:`exact_grid_ir`): weights that already sit on the
checkpoint's GGUF grid stored on that grid (4-bit codes with a float zero point, the tied head's Q8_0
codes in 8 bits), for OpenVINO's compressed-weight kernels with fp32 activations.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import StageError
from .cli import config_default, parser
from .files import write_json
from .logs import log_to
from .openvino_ir import census, ir_metrics, save_ir
from .runtimes.openvino import core as _core

log = logging.getLogger(__name__)

#: Largest error allowed between a weight rebuilt from its stored grid codes and the original,
#: in units of the float32 spacing (ulp) of the largest magnitude of its block of 32.
EXACT_GRID_MAX_ULPS = 4.0

#: NNCF weight compressions (the ``compression`` wildcard): name -> ``compress_weights`` settings.
#: ``group_size`` -1 means per output channel; ``data`` means a calibration set is needed.
COMPRESSIONS: dict[str, dict] = {
    "int8_asym": {"mode": "int8_asym", "group_size": -1, "ratio": 1.0},
    "int8_asym_fp32_head": {"mode": "int8_asym", "group_size": -1, "ratio": 1.0, "keep_head": True},
    "int4_asym_g32": {"mode": "int4_asym", "group_size": 32, "ratio": 1.0},
    "int4_asym_g32_awq": {
        "mode": "int4_asym",
        "group_size": 32,
        "ratio": 1.0,
        "awq": True,
        "scale_estimation": True,
        "data": True,
    },
    # not NNCF: the checkpoint's own GGUF grid (lmship.exact_grid), activations kept fp32
    "q4_exact": {"exact_grid": True},
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
    save_ir(compressed, out_xml, compress_to_fp16=False)
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
            ir_metrics(
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


def calibration_windows(hf_dir: Path, text_txt: Path, eval_npz: Path, *, seq_len: int, count: int) -> np.ndarray:
    """``count`` token windows ``int64 [count, 1, seq_len]`` from prose articles the evaluation does not use.

    The windows start articles, taken from the end of the corpus; the articles
    of the evaluation windows (``articles`` in ``eval_npz``) are excluded, so
    data-aware compression never sees the text it is judged on.
    """
    from transformers import AutoTokenizer

    from .corpus import read_documents

    with np.load(eval_npz) as data:
        used = {int(a) for a in data["articles"]}
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    windows = []
    documents = read_documents(text_txt)
    for i in range(len(documents) - 1, -1, -1):
        if i in used:
            continue
        ids = tokenizer(documents[i], add_special_tokens=False)["input_ids"]
        if len(ids) >= seq_len:
            windows.append(ids[:seq_len])
            if len(windows) == count:
                return np.asarray(windows, dtype=np.int64)[:, None, :]
    raise StageError(
        f"only {len(windows)} prose articles of at least {seq_len} tokens are left outside the evaluation "
        f"windows, {count} calibration windows asked: lower openvino.calibration_samples or eval.text_samples"
    )


def exact_grid_ir(model) -> dict:
    """Store every MatMul weight of ``model`` (in place) that sits on a GGUF grid on that grid.

    A Q4_1 weight (``d * q + m``, ``q`` in 0..15 per block of 32 inputs) becomes
    ``(u4 q - zp) * d`` with the float zero point ``zp = -m / d``: the decompression
    pattern (Convert, Subtract, Multiply) that OpenVINO's CPU plugin runs as a
    compressed-weight FullyConnected. A Q8_0 weight (the tied LM head, ``d * q``)
    becomes ``(u8 (q + 128) - 128) * d``. Nothing is re-quantised; the float zero
    point rebuilds ``d * q + m`` to within float rounding (:func:`verify_exact_grid`
    measures it). The runtime option ``DYNAMIC_QUANTIZATION_GROUP_SIZE`` 0 is written
    into the model: its activations are never quantised. Returns counts per form.
    """
    from openvino import opset13 as ops

    stats = {"matmul_q4_1": 0, "matmul_q8_0": 0, "matmul_fp32": 0, "gather_q8_0": 0}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "MatMul" or op.input_value(1).get_node().get_type_name() != "Constant":
            continue
        weight = op.input_value(1).get_node().get_data()
        stored = None
        if weight.ndim == 2:  # as [N, K]: blocks run along K
            stored = _grid_stored(weight if op.get_attributes()["transpose_b"] else weight.T)
        if stored is None:
            stats["matmul_fp32"] += 1
            continue
        kind, decompressed = stored
        new = ops.matmul(op.input_value(0), decompressed, op.get_attributes()["transpose_a"], True)
        new.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(new.output(0))
        stats[f"matmul_{kind}"] += 1
    for op in model.get_ordered_ops():  # the embedding table: a Gather of rows on the Q8_0 grid
        table = op.input_value(0).get_node() if op.get_type_name() == "Gather" else None
        if table is None or table.get_type_name() != "Constant" or op.input_value(2).get_node().get_data() != 0:
            continue
        values = table.get_data()  # [vocab, hidden]: blocks run along hidden
        stored = _grid_stored(values, q4=False) if values.ndim == 2 else None
        if stored is not None:
            op.input(0).replace_source_output(stored[1].output(0))
            stats["gather_q8_0"] += 1
    model.validate_nodes_and_infer_types()
    model.set_rt_info("0", ["runtime_options", "DYNAMIC_QUANTIZATION_GROUP_SIZE"])
    return stats


def _grid_stored(values: np.ndarray, *, q4: bool = True):
    """``values`` [rows, K] (blocks of 32 along K) stored on its GGUF grid, or None off any grid.

    Returns (``"q4_1"`` or ``"q8_0"``, the decompression subgraph of shape [rows, K]):
    ``(codes - zero) * scale`` with u4 codes and the float zero point ``-m / d`` (Q4_1),
    or u8 codes ``q + 128`` and zero point 128 (Q8_0). ``q4`` False tries Q8_0 only.
    """
    import openvino as ov
    from openvino import opset13 as ops

    from .exact_grid import q4_1_grid, q8_0_grid

    if q4 and (grid := q4_1_grid(values.T)) is not None:
        q, d, m = grid
        kind, codes = "q4_1", ops.constant(q.astype(np.uint8), dtype=ov.Type.u4)
        scale = d.astype(np.float32)[..., None]
        zero = (-m.astype(np.float32)[..., None] / scale).astype(np.float32)
    elif (grid8 := q8_0_grid(values.T)) is not None:
        q, d = grid8
        kind, codes = "q8_0", ops.constant((q + 128).astype(np.uint8), dtype=ov.Type.u8)
        scale = d.astype(np.float32)[..., None]
        zero = np.full_like(scale, 128.0)
    else:
        return None
    decompressed = ops.multiply(ops.subtract(ops.convert(codes, ov.Type.f32), ops.constant(zero)), ops.constant(scale))
    return kind, ops.reshape(decompressed, ops.constant(np.array(values.shape, np.int64)), False)


def _constant_values(constant) -> np.ndarray:
    """The values of an OpenVINO Constant in its shape (u4 is stored two per byte, low nibble first)."""
    data = constant.get_data()
    shape = tuple(constant.get_output_shape(0))
    if constant.get_output_element_type(0).get_type_name() == "u4":
        unpacked = np.empty(data.size * 2, np.uint8)
        unpacked[0::2], unpacked[1::2] = data & 0x0F, data >> 4
        data = unpacked[: int(np.prod(shape))]
    return data.reshape(shape)


def verify_exact_grid(original, compressed) -> dict:
    """Rebuild each grid-stored weight of ``compressed`` from its codes and compare with ``original``.

    Both are OpenVINO models (the fp32 IR and the output of :func:`exact_grid_ir`),
    matched by MatMul name. The rebuild is the decompression the CPU plugin runs,
    ``(codes - zp) * d`` in float32. Raises :class:`StageError` naming the weights
    whose error exceeds :data:`EXACT_GRID_MAX_ULPS` ulps of their block's largest
    magnitude; returns the count and the largest error seen (absolute and in ulps).
    """
    weights = {}
    for op in original.get_ordered_ops():
        if op.get_type_name() == "MatMul" and op.input_value(1).get_node().get_type_name() == "Constant":
            w = op.input_value(1).get_node().get_data()
            weights[op.get_friendly_name()] = w if op.get_attributes()["transpose_b"] else w.T
    checked, worst_abs, worst_ulps, wrong = 0, 0.0, 0.0, []
    for op in compressed.get_ordered_ops():
        if op.get_type_name() != "MatMul" or op.input_value(1).get_node().get_type_name() != "Reshape":
            continue
        multiply = op.input_value(1).get_node().input_value(0).get_node()
        subtract = multiply.input_value(0).get_node()
        convert = subtract.input_value(0).get_node()
        codes = convert.input_value(0).get_node()
        if not (multiply.get_type_name() == "Multiply" and subtract.get_type_name() == "Subtract"):
            continue
        q = _constant_values(codes).astype(np.float32)
        zero = subtract.input_value(1).get_node().get_data().astype(np.float32)
        scale = multiply.input_value(1).get_node().get_data().astype(np.float32)
        source = weights.get(op.get_friendly_name())
        if source is None:
            wrong.append(f"{op.get_friendly_name()} (no such MatMul in the original)")
            continue
        blocks = source.reshape(source.shape[0], -1, q.shape[-1])
        spacing = np.spacing(np.abs(blocks).max(-1, keepdims=True)).astype(np.float64)
        err = np.abs(((q - zero) * scale).reshape(blocks.shape).astype(np.float64) - blocks)
        ulps = float((err / spacing).max())
        worst_abs, worst_ulps = max(worst_abs, float(err.max())), max(worst_ulps, ulps)
        checked += 1
        if ulps > EXACT_GRID_MAX_ULPS:
            wrong.append(f"{op.get_friendly_name()} ({ulps:.1f} ulps)")
    if wrong or not checked:
        raise StageError(
            "the exact-grid IR does not rebuild the original weights within "
            f"{EXACT_GRID_MAX_ULPS:g} ulps: " + (", ".join(wrong[:5]) if wrong else "no grid-stored weight found")
        )
    return {"weights_checked": checked, "max_abs_error": worst_abs, "max_error_ulps": round(worst_ulps, 2)}


def exact_grid_openvino(
    ir_xml: Path,
    out_xml: Path,
    *,
    census_json: Path | None = None,
    metrics_json: Path | None = None,
    backend: str = "openvino_q4_exact",
) -> Path:
    """:func:`exact_grid_ir` of the IR ``ir_xml`` into ``out_xml``, verified on the written IR
    (``backend`` names the format in a refusal of a model with no Q4_1 weight)."""
    import openvino as ov

    from .exact_grid import require_q4_1

    started = time.monotonic()
    core = _core()
    model = core.read_model(str(ir_xml))
    stats = exact_grid_ir(model)
    require_q4_1(stats, ir_xml, backend)
    proof: dict = {}

    def check(xml: Path) -> None:
        proof.update(verify_exact_grid(core.read_model(str(ir_xml)), core.read_model(str(xml))))

    save_ir(model, out_xml, compress_to_fp16=False, check=check)
    seconds = time.monotonic() - started
    info = census(model)
    log.info("%s: %s; rebuilt weights vs the originals: %s", out_xml, stats, proof)
    if census_json is not None:
        write_json(census_json, info)
    if metrics_json is not None:
        write_json(
            metrics_json,
            ir_metrics(out_xml, seconds, info, recipe=stats, verified=proof, openvino_version=ov.__version__),
        )
    return Path(out_xml)


def compress_openvino(
    ir_xml: Path,
    out_xml: Path,
    compression: str,
    calibration: np.ndarray | None = None,
    *,
    census_json: Path | None = None,
    metrics_json: Path | None = None,
) -> Path:
    """:func:`compress_ir` with the settings of a named :data:`COMPRESSIONS` entry.

    ``calibration`` (see :func:`calibration_windows`) is used only by the
    data-aware compressions and required by them.
    """
    if compression not in COMPRESSIONS:
        raise StageError(f"unknown NNCF compression {compression!r}; expected one of {tuple(COMPRESSIONS)}")
    if COMPRESSIONS[compression].get("exact_grid"):
        return exact_grid_openvino(ir_xml, out_xml, census_json=census_json, metrics_json=metrics_json)
    settings = {k: v for k, v in COMPRESSIONS[compression].items() if k != "data"}
    needs = COMPRESSIONS[compression].get("data", False)
    return compress_ir(
        ir_xml,
        out_xml,
        calibration=calibration if needs else None,
        census_json=census_json,
        metrics_json=metrics_json,
        **settings,
    )


def needs_calibration(compression: str) -> bool:
    return bool(COMPRESSIONS[compression].get("data", False))


def main(argv: list[str] | None = None) -> None:
    p = parser("compress_openvino", "NNCF weight compression of an OpenVINO IR.")
    p.add_argument("--ir", type=Path, required=True)
    p.add_argument("--compression", choices=tuple(COMPRESSIONS), required=True)
    p.add_argument("--model", type=Path, help="prepared Hugging Face folder (tokenizer; data-aware compressions)")
    p.add_argument("--text", type=Path, help="the evaluation prose (data-aware compressions)")
    p.add_argument("--eval-inputs", type=Path, help="eval_inputs.npz: its articles are not calibrated on")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--calibration-samples", type=int, default=config_default("openvino", "calibration_samples"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--census", type=Path)
    p.add_argument("--metrics", type=Path)
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        calibration = None
        if needs_calibration(args.compression):
            if not (args.model and args.text and args.eval_inputs):
                p.error(f"{args.compression} is data-aware: give --model, --text and --eval-inputs")
            calibration = calibration_windows(
                args.model, args.text, args.eval_inputs, seq_len=args.seq_len, count=args.calibration_samples
            )
        compress_openvino(
            args.ir, args.out, args.compression, calibration, census_json=args.census, metrics_json=args.metrics
        )
