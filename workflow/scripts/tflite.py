"""Snakemake adapter: lmship.tflite.tflite, checked on the evaluation set (forward graph)
or by lmship.generation_stages.tflite_gate (prefill / decode graph), into the rule's artifact folder."""

from pathlib import Path

from lmship.generation_stages import tflite_gate
from lmship.records import METRICS, run_job
from lmship.tflite import tflite

smk = snakemake  # noqa: F821
forward = smk.wildcards.graph == "seq"


def work(out: Path) -> None:
    tflite(
        Path(smk.input.savedmodel),
        out / "model.tflite",
        precision=smk.wildcards.precision,
        inputs_npz=Path(smk.input.inputs) if forward else None,
        reference_npy=Path(smk.input.reference) if forward else None,
        min_top1=smk.params.min_top1,
        max_rel_diff=smk.params.max_rel_diff,
        max_mean_kld=smk.params.max_mean_kld,
        census_json=out / "ops.json",
        metrics_json=out / METRICS,
        gate=None
        if forward
        else tflite_gate(
            smk.wildcards.graph,
            Path(smk.input.hf),
            Path(smk.input.inputs),
            Path(smk.input.host),
            precision=smk.wildcards.precision,
            min_top1=smk.params.min_top1,
            max_rel_diff=smk.params.max_rel_diff,
            max_mean_kld=smk.params.max_mean_kld,
        ),
    )


run_job(smk, work, inputs=[smk.input.savedmodel])
