"""Snakemake adapter: lmship.simplify.simplify_onnx."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.logs import log_to
from lmship.simplify import simplify_onnx

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
