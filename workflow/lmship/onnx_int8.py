"""ONNX Runtime int8 variants of the simplified ONNX model.

``dynamic``  ``quantize_dynamic`` of every MatMul with a constant weight
             (int8 weights per channel, activations quantised per tensor on the
             fly). Fast, and on small LLMs known to break accuracy: kept as the
             cautionary row.
``mixed``    the same, with the MatMuls whose inputs carry activation outliers
             kept in fp32 (see :func:`sensitive_matmuls`).
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

VARIANTS = ("dynamic", "mixed")


def _weight_matmuls(model) -> list[str]:
    inits = {i.name for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in inits]


def sensitive_matmuls(model) -> list[str]:
    """MatMuls kept in fp32 by the ``mixed`` variant (placeholder: none)."""
    return []


def quantize_onnx(
    in_onnx: Path,
    out_onnx: Path,
    *,
    variant: str,
    inputs_npz: Path | None = None,
    metrics_json: Path | None = None,
) -> dict:
    """Write the ``variant`` int8 model of ``in_onnx`` to ``out_onnx``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .simplify import load_onnx

    if variant not in VARIANTS:
        raise StageError(f"unknown ONNX int8 variant {variant!r}; expected one of {VARIANTS}")
    model = load_onnx(in_onnx)
    matmuls = _weight_matmuls(model)
    exclude = sensitive_matmuls(model) if variant == "mixed" else []
    del model
    started = time.monotonic()
    with atomic_output(Path(out_onnx)) as tmp:
        quantize_dynamic(
            str(in_onnx),
            str(tmp),
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=exclude,
            extra_options={"MatMulConstBOnly": True},
        )
    metrics = {
        "artifact": str(out_onnx),
        "variant": variant,
        "size_mb": round(size_bytes(out_onnx) / 1e6, 1),
        "weight_matmuls": len(matmuls),
        "kept_fp32": exclude,
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
    parser.add_argument("--inputs", type=Path)
    parser.add_argument("--metrics", type=Path)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    with log_to(args.log):
        quantize_onnx(args.onnx, args.out, variant=args.variant, inputs_npz=args.inputs, metrics_json=args.metrics)


if __name__ == "__main__":
    main()
