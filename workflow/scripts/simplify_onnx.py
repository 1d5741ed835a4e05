"""Snakemake adapter: lmship.simplify_onnx.simplify_onnx."""

from pathlib import Path

from lmship.logs import log_to
from lmship.simplify_onnx import simplify_onnx

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    simplify_onnx(
        Path(smk.input.onnx),
        Path(smk.input.inputs),
        Path(smk.input.reference),
        Path(smk.output.onnx),
        min_top1=smk.params.min_top1,
        metrics_json=Path(smk.output.metrics),
    )
