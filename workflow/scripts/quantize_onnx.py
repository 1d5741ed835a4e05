"""Snakemake adapter: lmship.onnx_int8.quantize_onnx."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.logs import log_to
from lmship.onnx_int8 import quantize_onnx

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    quantize_onnx(
        Path(smk.input.onnx),
        Path(smk.output.onnx),
        variant=smk.wildcards.variant,
        metrics_json=Path(smk.output.metrics),
    )
