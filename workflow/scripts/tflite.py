"""Snakemake adapter: lmship.tflite.tflite."""

from pathlib import Path

from lmship.logs import log_to
from lmship.tflite import tflite

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    tflite(
        Path(smk.input.savedmodel),
        Path(smk.output.tflite),
        precision=smk.wildcards.precision,
        inputs_npz=Path(smk.input.inputs),
        reference_npy=Path(smk.input.reference),
        min_top1=smk.params.min_top1,
        census_json=Path(smk.output.census),
        metrics_json=Path(smk.output.metrics),
    )
