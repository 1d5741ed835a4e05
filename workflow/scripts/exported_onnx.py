"""Snakemake adapter: lmship.exported_onnx.exported_onnx; the exported graphs are the rule's artifact folder."""

from pathlib import Path

from lmship.records import run_job
from lmship.exported_onnx import exported_onnx

smk = snakemake  # noqa: F821
run_job(
    smk,
    lambda out: exported_onnx(
        Path(smk.input.model),
        Path(smk.input.prompts[0]),
        out,
        prompt_len=smk.params.prompt_len,
        max_len=smk.params.max_len,
        max_rel_diff=smk.params.max_rel_diff,
        max_mean_kld=smk.params.max_mean_kld,
    ),
)
