"""Snakemake adapter: lmship.simplify_onnx.simplify_onnx (forward graph) or
lmship.generation_stages.simplify_generation (prefill / decode graph)."""

from pathlib import Path

from lmship.generation_stages import simplify_generation
from lmship.logs import log_to
from lmship.simplify_onnx import simplify_onnx

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    if smk.wildcards.graph == "seq":
        simplify_onnx(
            Path(smk.input.onnx),
            Path(smk.input.inputs),
            Path(smk.input.reference),
            Path(smk.output.onnx),
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            metrics_json=Path(smk.output.metrics),
        )
    else:
        simplify_generation(
            smk.wildcards.graph,
            Path(smk.input.onnx),
            Path(smk.input.hf),
            Path(smk.input.inputs),
            Path(smk.input.host),
            Path(smk.output.onnx),
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            metrics_json=Path(smk.output.metrics),
        )
