"""Snakemake adapter: lmship.simplify_onnx.simplify_onnx (forward graph) or
lmship.generation_stages.simplify_generation (prefill / decode graph), into the rule's artifact folder."""

from pathlib import Path

from lmship.generation_stages import simplify_generation
from lmship.records import METRICS, artifact_in, run_job
from lmship.simplify_onnx import simplify_onnx

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    onnx = artifact_in(smk.input.onnx)
    if smk.wildcards.graph == "seq":
        simplify_onnx(
            onnx,
            Path(smk.input.inputs),
            Path(smk.input.reference),
            out / "model.onnx",
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            metrics_json=out / METRICS,
        )
    else:
        simplify_generation(
            smk.wildcards.graph,
            onnx,
            Path(smk.input.hf),
            Path(smk.input.inputs),
            Path(smk.input.host),
            out / "model.onnx",
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            metrics_json=out / METRICS,
        )


run_job(smk, work, inputs=[smk.input.onnx])
