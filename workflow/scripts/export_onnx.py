"""Snakemake adapter: lmship.export_onnx.export_onnx (forward graph) or
lmship.generation_stages.export_generation (prefill / decode graph), into the rule's artifact folder."""

from pathlib import Path

from lmship.export_onnx import export_onnx
from lmship.generation_stages import export_generation
from lmship.records import METRICS, run_job

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    if smk.wildcards.graph == "seq":
        export_onnx(
            Path(smk.input.model),
            Path(smk.input.inputs),
            Path(smk.input.reference),
            out / "model.onnx",
            opset=smk.params.opset,
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            metrics_json=out / METRICS,
        )
    else:
        export_generation(
            smk.wildcards.graph,
            Path(smk.input.model),
            Path(smk.input.inputs),
            Path(smk.input.host),
            out / "model.onnx",
            length=int(smk.wildcards.seq),
            opset=smk.params.opset,
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            metrics_json=out / METRICS,
        )


run_job(smk, work)
