"""Snakemake adapter: lmship.eval_inputs.eval_inputs."""

from pathlib import Path

from lmship.eval_inputs import eval_inputs
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    eval_inputs(
        Path(smk.input.model),
        Path(smk.input.text),
        Path(smk.output.inputs),
        seq_len=int(smk.wildcards.seq),
        batch_size=smk.params.batch_size,
        text_samples=smk.params.text_samples,
        random_samples=smk.params.random_samples,
        seed=smk.params.seed,
    )
