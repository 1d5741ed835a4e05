"""ONNX Runtime quantised variants of the simplified ONNX model.

``int8_dynamic``  ``quantize_dynamic`` of every MatMul with a constant weight, LM head
                  included (int8 weights per output channel, activations quantised per
                  tensor on the fly, VNNI MatMulInteger kernels). The fastest, and on
                  SmolLM2 it breaks the model: the first token's massive activations
                  set one scale for the whole tensor. Kept as the cautionary row.
``int8_block``    ``MatMulNBits`` 8-bit block-wise weights (blocks of 32) with
                  ``accuracy_level=4``: activations quantised to int8 per block of 32,
                  so an outlier only coarsens its own block.
``q4_exact``      weights already on a GGUF grid stored losslessly in 4 bits
                  (:mod:`lmship.exact_grid`): a quarter of the size, same answers,
                  fp32 compute.

The file is ``onnx_<variant>.onnx`` and the backend that runs it ``onnx_<variant>``.
A ``Gemm`` by a constant weight (the exporter's form for the generation graphs' 2-D
activations) is rewritten to ``MatMul`` first (:func:`lmship.decode_graph.gemm_to_matmul`):
the quantisers above take MatMul.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from . import StageError
from .cli import command
from .decode_graph import gemm_to_matmul
from .files import atomic_onnx, external_data_needed, load_onnx, size_bytes, stage_metrics

log = logging.getLogger(__name__)

VARIANTS = ("int8_dynamic", "int8_block", "q4_exact")


def _weight_matmuls(model) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]


def _large(path: Path) -> bool:
    """Whether the model at ``path`` (with its external data) is too large for one protobuf."""
    return external_data_needed(size_bytes(path))


def _int8_dynamic(in_onnx: Path, out_onnx: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(in_onnx),
        str(out_onnx),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"MatMulConstBOnly": True},
        use_external_data_format=_large(in_onnx),
    )
    return {"recipe": "quantize_dynamic(QInt8, per_channel=True, MatMulConstBOnly)"}


def _int8_block(in_onnx: Path, out_onnx: Path, *, bits: int = 8, block_size: int = 32, accuracy_level: int = 4) -> dict:
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq
    from onnxruntime.quantization.quant_utils import QuantFormat

    config = mnq.DefaultWeightOnlyQuantConfig(
        block_size=block_size,
        is_symmetric=False,
        accuracy_level=accuracy_level,
        quant_format=QuantFormat.QOperator,
        op_types_to_quantize=("MatMul",),
        bits=bits,
    )
    quantizer = mnq.MatMulNBitsQuantizer(
        load_onnx(in_onnx),
        block_size=block_size,
        is_symmetric=False,
        accuracy_level=accuracy_level,
        op_types_to_quantize=("MatMul",),
        algo_config=config,
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out_onnx), use_external_data_format=_large(in_onnx))
    return {"recipe": f"MatMulNBits bits={bits} block_size={block_size} accuracy_level={accuracy_level}"}


def _q4_exact(in_onnx: Path, out_onnx: Path) -> dict:
    from .exact_grid import reencode_file

    stats = reencode_file(in_onnx, out_onnx)
    return {"recipe": "lossless GGUF-grid re-encoding (MatMulNBits 4-bit + fp32 correction, Q8_0 Gather)", **stats}


def quantize_onnx(
    in_onnx: Path,
    out_onnx: Path,
    *,
    variant: str,
    metrics_json: Path | None = None,
) -> dict:
    """Write the ``variant`` quantised model of ``in_onnx`` to ``out_onnx``."""

    if variant not in VARIANTS:
        raise StageError(f"unknown ONNX quantisation variant {variant!r}; expected one of {VARIANTS}")
    matmuls = _weight_matmuls(load_onnx(in_onnx, weights=False))
    make = {"int8_dynamic": _int8_dynamic, "int8_block": _int8_block, "q4_exact": _q4_exact}[variant]
    started = time.monotonic()
    with atomic_onnx(Path(out_onnx)) as tmp:
        # The exporter emits Gemm for the generation graphs' 2-D activations; MatMulNBits and the
        # exact grid take MatMul only, and quantize_dynamic's Gemm path breaks the prefill graph.
        matmul = tmp.with_name(tmp.name + ".matmul.onnx")
        rewritten = gemm_to_matmul(Path(in_onnx), matmul)
        source = matmul if rewritten else Path(in_onnx)
        try:
            info = make(source, tmp)
        except StageError as exc:  # name the stage's input, not its temporary rewrite
            raise StageError(str(exc).replace(str(source), str(in_onnx))) from exc
        finally:
            matmul.unlink(missing_ok=True)
            matmul.with_name(matmul.name + ".data").unlink(missing_ok=True)
        info["gemm_to_matmul"] = rewritten
    return stage_metrics(
        metrics_json,
        out_onnx,
        started,
        variant=variant,
        weight_matmuls=len(matmuls),
        **info,
        quantize_seconds=round(time.monotonic() - started, 1),
    )


#: ``python -m lmship quantize_onnx``: its options are the function's parameters.
main = command(quantize_onnx, choices={"variant": VARIANTS})


if __name__ == "__main__":
    main()
