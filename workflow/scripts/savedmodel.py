"""Snakemake adapter: lmship.savedmodel.savedmodel (forward graph) or
lmship.generation_stages.savedmodel_generation (prefill / decode graph); the SavedModel is the
rule's artifact folder."""

from pathlib import Path

from lmship.generation_stages import savedmodel_generation
from lmship.records import METRICS, artifact_in, run_job
from lmship.savedmodel import savedmodel

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    options = {
        "min_top1": smk.params.min_top1,
        "max_rel_diff": smk.params.max_rel_diff,
        "max_mean_kld": smk.params.max_mean_kld,
        "onnx2tf_options": dict(smk.params.onnx2tf),
        "fast_weight_matmul": smk.params.fast_weight_matmul,
        "metrics_json": out / METRICS,
    }
    onnx = artifact_in(smk.input.onnx)
    if smk.wildcards.graph == "seq":
        savedmodel(onnx, Path(smk.input.inputs), Path(smk.input.reference), out, **options)
    else:
        savedmodel_generation(
            smk.wildcards.graph, onnx, Path(smk.input.hf), Path(smk.input.inputs), Path(smk.input.host), out, **options
        )


run_job(smk, work, inputs=[smk.input.onnx])
