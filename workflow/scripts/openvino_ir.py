"""Snakemake adapter: lmship.openvino_ir.openvino_ir of the rule's {graph}, into its artifact folder."""

from pathlib import Path

from lmship.gate import gate_inputs
from lmship.openvino_ir import openvino_ir
from lmship.records import METRICS, artifact_in, run_job

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    openvino_ir(
        artifact_in(smk.input.onnx),
        out / "model.xml",
        census_json=out / "ops.json",
        metrics_json=out / METRICS,
        **gate_inputs(smk),
    )


run_job(smk, work, inputs=[smk.input.onnx])
