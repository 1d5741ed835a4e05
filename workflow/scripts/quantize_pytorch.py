"""Snakemake adapter: lmship.quantize_pytorch.quantize_pytorch."""

from pathlib import Path

from lmship.logs import log_to
from lmship.quantize_pytorch import quantize_pytorch

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    quantize_pytorch(Path(smk.input.model), Path(smk.output.model), Path(smk.output.metrics))
