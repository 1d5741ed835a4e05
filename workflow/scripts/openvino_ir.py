"""Snakemake adapter: lmship.openvino.openvino_ir (forward graph) or
lmship.generation_stages.openvino_generation (prefill / decode graph), into the rule's artifact folder."""

from pathlib import Path

from lmship.generation_stages import openvino_generation
from lmship.openvino import openvino_ir
from lmship.records import METRICS, artifact_in, run_job

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    outputs = {"census_json": out / "ops.json", "metrics_json": out / METRICS}
    onnx = artifact_in(smk.input.onnx)
    if smk.wildcards.graph == "seq":
        openvino_ir(
            onnx,
            out / "model.xml",
            inputs_npz=Path(smk.input.inputs),
            reference_npy=Path(smk.input.reference),
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            **outputs,
        )
    else:
        openvino_generation(
            smk.wildcards.graph,
            onnx,
            Path(smk.input.hf),
            Path(smk.input.inputs),
            Path(smk.input.host),
            out / "model.xml",
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            **outputs,
        )


run_job(smk, work, inputs=[smk.input.onnx])
