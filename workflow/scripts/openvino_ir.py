"""Snakemake adapter: lmship.openvino.openvino_ir."""

from pathlib import Path

from lmship.logs import log_to
from lmship.openvino import openvino_ir

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    openvino_ir(
        Path(smk.input.onnx),
        Path(smk.output.xml),
        inputs_npz=Path(smk.input.inputs),
        reference_npy=Path(smk.input.reference),
        min_top1=smk.params.min_top1,
        census_json=Path(smk.output.census),
        metrics_json=Path(smk.output.metrics),
    )
