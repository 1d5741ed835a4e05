"""Snakemake adapter: lmship.quantize_onnx.quantize_onnx, into the rule's artifact folder."""

from pathlib import Path

from lmship.backends import refuse_if_not_applicable
from lmship.quantize_onnx import quantize_onnx
from lmship.records import METRICS, artifact_in, run_job

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    refuse_if_not_applicable(f"onnx_{smk.wildcards.variant}", Path(smk.input.hf))
    quantize_onnx(
        artifact_in(smk.input.onnx), out / "model.onnx", variant=smk.wildcards.variant, metrics_json=out / METRICS
    )


run_job(smk, work, inputs=[smk.input.onnx])
