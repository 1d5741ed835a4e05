"""Snakemake adapter: lmship.stateful_ir.stateful_ir; the stateful IR is the rule's artifact folder."""

from pathlib import Path

from lmship.records import run_job
from lmship.stateful_ir import stateful_ir

smk = snakemake  # noqa: F821
run_job(
    smk,
    lambda out: stateful_ir(
        Path(smk.input.model),
        Path(smk.input.prompts[0]),
        out,
        max_len=smk.params.max_len,
        max_rel_diff=smk.params.max_rel_diff,
        max_mean_kld=smk.params.max_mean_kld,
    ),
)
