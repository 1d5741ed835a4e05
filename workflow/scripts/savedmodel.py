"""Snakemake adapter: lmship.savedmodel.onnx_to_savedmodel."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.logs import log_to
from lmship.savedmodel import onnx_to_savedmodel

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    onnx_to_savedmodel(
        Path(smk.input.onnx),
        Path(smk.input.inputs),
        Path(smk.input.reference),
        Path(smk.output.saved_model),
        min_top1=smk.params.min_top1,
        onnx2tf_options=dict(smk.params.onnx2tf),
        fast_weight_matmul=smk.params.fast_weight_matmul,
        metrics_json=Path(smk.output.metrics),
    )
