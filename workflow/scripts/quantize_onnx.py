"""Snakemake adapter: lmship.quantize_onnx.quantize_onnx."""

from pathlib import Path

from lmship.logs import log_to
from lmship.quantize_onnx import quantize_onnx

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    quantize_onnx(
        Path(smk.input.onnx),
        Path(smk.output.onnx),
        variant=smk.wildcards.variant,
        metrics_json=Path(smk.output.metrics),
    )
