"""Snakemake adapter: lmship.savedmodel.savedmodel."""

from pathlib import Path

from lmship.logs import log_to
from lmship.savedmodel import savedmodel

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    savedmodel(
        Path(smk.input.onnx),
        Path(smk.input.inputs),
        Path(smk.input.reference),
        Path(smk.output.savedmodel),
        min_top1=smk.params.min_top1,
        onnx2tf_options=dict(smk.params.onnx2tf),
        fast_weight_matmul=smk.params.fast_weight_matmul,
        metrics_json=Path(smk.output.metrics),
    )
