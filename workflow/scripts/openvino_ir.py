"""Snakemake adapter: lmship.openvino.openvino_ir (forward graph) or
lmship.generation_stages.openvino_generation (prefill / decode graph)."""

from pathlib import Path

from lmship.generation_stages import openvino_generation
from lmship.logs import log_to
from lmship.openvino import openvino_ir

smk = snakemake  # noqa: F821
outputs = {"census_json": Path(smk.output.census), "metrics_json": Path(smk.output.metrics)}
with log_to(smk.log[0]):
    if smk.wildcards.graph == "seq":
        openvino_ir(
            Path(smk.input.onnx),
            Path(smk.output.xml),
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
            Path(smk.input.onnx),
            Path(smk.input.hf),
            Path(smk.input.inputs),
            Path(smk.input.host),
            Path(smk.output.xml),
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
            **outputs,
        )
