"""Snakemake adapter: lmship.torch_int8.quantize_pytorch."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.logs import log_to
from lmship.torch_int8 import quantize_pytorch

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    quantize_pytorch(Path(smk.input.model), Path(smk.output.model), Path(smk.output.metrics))
