"""Snakemake adapter: lmship.export_onnx.export_onnx."""

from pathlib import Path

from lmship.export_onnx import export_onnx
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    export_onnx(
        Path(smk.input.model),
        Path(smk.input.inputs),
        Path(smk.input.reference),
        Path(smk.output.onnx),
        opset=smk.params.opset,
        min_top1=smk.params.min_top1,
        metrics_json=Path(smk.output.metrics),
    )
