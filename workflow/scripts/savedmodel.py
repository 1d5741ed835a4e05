"""Snakemake adapter: lmship.savedmodel.savedmodel of the rule's {graph}; the SavedModel is the
rule's artifact folder."""

from pathlib import Path

from lmship.gate import gate_inputs
from lmship.records import METRICS, artifact_in, run_job
from lmship.savedmodel import savedmodel

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    checked = gate_inputs(smk)
    savedmodel(
        artifact_in(smk.input.onnx),
        checked.pop("inputs_npz"),
        checked.pop("reference_npy"),
        out,
        onnx2tf_options=dict(smk.params.onnx2tf),
        fast_weight_matmul=smk.params.fast_weight_matmul,
        metrics_json=out / METRICS,
        **checked,
    )


run_job(smk, work, inputs=[smk.input.onnx])
