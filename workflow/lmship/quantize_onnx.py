"""ONNX Runtime quantised variants of the simplified ONNX model.

``dynamic``  ``quantize_dynamic`` of every MatMul with a constant weight, LM head
             included (int8 weights per output channel, activations quantised per
             tensor on the fly, VNNI MatMulInteger kernels). The fastest, and on
             SmolLM2 it breaks the model: the first token's massive activations
             set one scale for the whole tensor. Kept as the cautionary row.
``block``    ``MatMulNBits`` 8-bit block-wise weights (blocks of 32) with
             ``accuracy_level=4``: activations quantised to int8 per block of 32,
             so an outlier only coarsens its own block.
``q4exact``  weights already on a GGUF grid stored losslessly in 4 bits
             (:mod:`lmship.exact_grid`): a quarter of the size, same answers,
             fp32 compute.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from . import StageError
from .files import atomic_output, size_bytes, write_json
from .logs import log_to, peak_rss_mb

log = logging.getLogger(__name__)

VARIANTS = ("dynamic", "block", "q4exact")


def _weight_matmuls(model) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]


def _dynamic(in_onnx: Path, out_onnx: Path) -> dict:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(in_onnx),
        str(out_onnx),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"MatMulConstBOnly": True},
    )
    return {"recipe": "quantize_dynamic(QInt8, per_channel=True, MatMulConstBOnly)"}


def _block(in_onnx: Path, out_onnx: Path, *, bits: int = 8, block_size: int = 32, accuracy_level: int = 4) -> dict:
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq
    from onnxruntime.quantization.quant_utils import QuantFormat

    from .simplify import load_onnx

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
    quantizer.model.save_model_to_file(str(out_onnx), use_external_data_format=False)
    return {"recipe": f"MatMulNBits bits={bits} block_size={block_size} accuracy_level={accuracy_level}"}


def _q4exact(in_onnx: Path, out_onnx: Path) -> dict:
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
    from .simplify import load_onnx

    if variant not in VARIANTS:
        raise StageError(f"unknown ONNX quantisation variant {variant!r}; expected one of {VARIANTS}")
    matmuls = _weight_matmuls(load_onnx(in_onnx))
    make = {"dynamic": _dynamic, "block": _block, "q4exact": _q4exact}[variant]
    started = time.monotonic()
    with atomic_output(Path(out_onnx)) as tmp:
        info = make(Path(in_onnx), tmp)
    metrics = {
        "artifact": str(out_onnx),
        "variant": variant,
        "size_mb": round(size_bytes(out_onnx) / 1e6, 1),
        "weight_matmuls": len(matmuls),
        **info,
        "quantize_seconds": round(time.monotonic() - started, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    if metrics_json is not None:
        write_json(metrics_json, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lmship onnx-int8", description=__doc__.split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variant", choices=VARIANTS, default="dynamic")
    parser.add_argument("--metrics", type=Path)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    with log_to(args.log):
        quantize_onnx(args.onnx, args.out, variant=args.variant, metrics_json=args.metrics)


if __name__ == "__main__":
    main()
