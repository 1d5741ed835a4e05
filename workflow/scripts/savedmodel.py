"""Snakemake adapter: lmship.savedmodel.savedmodel (forward graph) or
lmship.generation_stages.savedmodel_generation (prefill / decode graph)."""

from pathlib import Path

from lmship.generation_stages import savedmodel_generation
from lmship.logs import log_to
from lmship.savedmodel import savedmodel

smk = snakemake  # noqa: F821
options = {
    "min_top1": smk.params.min_top1,
    "max_rel_diff": smk.params.max_rel_diff,
    "max_mean_kld": smk.params.max_mean_kld,
    "onnx2tf_options": dict(smk.params.onnx2tf),
    "fast_weight_matmul": smk.params.fast_weight_matmul,
    "metrics_json": Path(smk.output.metrics),
}
with log_to(smk.log[0]):
    if smk.wildcards.graph == "seq":
        savedmodel(
            Path(smk.input.onnx),
            Path(smk.input.inputs),
            Path(smk.input.reference),
            Path(smk.output.savedmodel),
            **options,
        )
    else:
        savedmodel_generation(
            smk.wildcards.graph,
            Path(smk.input.onnx),
            Path(smk.input.hf),
            Path(smk.input.inputs),
            Path(smk.input.host),
            Path(smk.output.savedmodel),
            **options,
        )
