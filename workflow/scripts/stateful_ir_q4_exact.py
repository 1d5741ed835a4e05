"""Snakemake adapter: lmship.stateful_ir_q4_exact.stateful_ir_q4_exact, into the rule's artifact folder."""

from pathlib import Path

from lmship.backends import refuse_if_not_applicable
from lmship.records import run_job
from lmship.stateful_ir_q4_exact import stateful_ir_q4_exact

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    refuse_if_not_applicable("openvino_genai_q4_exact", Path(smk.input.model))
    stateful_ir_q4_exact(
        Path(smk.input.stateful),
        Path(smk.input.model),
        Path(smk.input.prompts[0]),
        out,
        max_rel_diff=smk.params.max_rel_diff,
        max_mean_kld=smk.params.max_mean_kld,
    )


run_job(smk, work, inputs=[smk.input.stateful])
