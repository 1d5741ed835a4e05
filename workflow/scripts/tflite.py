"""Snakemake adapter: lmship.tflite.convert_tflite."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.logs import log_to
from lmship.tflite import convert_tflite

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    convert_tflite(
        Path(smk.input.saved_model),
        Path(smk.output.tflite),
        precision=smk.wildcards.precision,
        inputs_npz=Path(smk.input.inputs),
        reference_npy=Path(smk.input.reference),
        min_top1=smk.params.min_top1,
        census_json=Path(smk.output.census),
        metrics_json=Path(smk.output.metrics),
    )
