"""Snakemake adapter: lmship.export_onnx.export_onnx (forward graph) or
lmship.generation_stages.export_generation (prefill / decode graph)."""

from pathlib import Path

from lmship.export_onnx import export_onnx
from lmship.generation_stages import export_generation
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    if smk.wildcards.graph == "seq":
        export_onnx(
            Path(smk.input.model),
            Path(smk.input.inputs),
            Path(smk.input.reference),
            Path(smk.output.onnx),
            opset=smk.params.opset,
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            metrics_json=Path(smk.output.metrics),
        )
    else:
        export_generation(
            smk.wildcards.graph,
            Path(smk.input.model),
            Path(smk.input.inputs),
            Path(smk.input.host),
            Path(smk.output.onnx),
            length=int(smk.wildcards.seq),
            opset=smk.params.opset,
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            metrics_json=Path(smk.output.metrics),
        )
