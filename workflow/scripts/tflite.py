"""Snakemake adapter: lmship.tflite.tflite of the rule's {graph} at its {precision}, into its artifact folder."""

from pathlib import Path

from lmship.gate import gate_inputs
from lmship.records import METRICS, run_job
from lmship.tflite import tflite

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    tflite(
        Path(smk.input.savedmodel),
        out / "model.tflite",
        precision=smk.wildcards.precision,
        census_json=out / "ops.json",
        metrics_json=out / METRICS,
        **gate_inputs(smk),
    )


run_job(smk, work, inputs=[smk.input.savedmodel])
