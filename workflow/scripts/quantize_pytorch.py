"""Snakemake adapter: lmship.quantize_pytorch.quantize_pytorch; the quantised model is the rule's artifact folder."""

from pathlib import Path

from lmship.quantize_pytorch import quantize_pytorch
from lmship.records import METRICS, run_job

smk = snakemake  # noqa: F821
run_job(smk, lambda out: quantize_pytorch(Path(smk.input.model), out, out / METRICS))
