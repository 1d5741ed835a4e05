"""Snakemake adapter: lmship.simplify_onnx.simplify_onnx of the rule's {graph}, into its artifact folder."""

from pathlib import Path

from lmship.gate import gate_inputs
from lmship.records import METRICS, artifact_in, run_job
from lmship.simplify_onnx import simplify_onnx

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    checked = gate_inputs(smk)
    simplify_onnx(
        artifact_in(smk.input.onnx),
        checked.pop("inputs_npz"),
        checked.pop("reference_npy"),
        out / "model.onnx",
        metrics_json=out / METRICS,
        **checked,
    )


run_job(smk, work, inputs=[smk.input.onnx])
