"""Snakemake adapter: lmship.evalset.make_inputs."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.evalset import make_inputs
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    make_inputs(
        Path(smk.input.model),
        Path(smk.output.inputs),
        seq_len=int(smk.wildcards.seq),
        batch_size=smk.params.batch_size,
        text_samples=smk.params.text_samples,
        random_samples=smk.params.random_samples,
        seed=smk.params.seed,
    )
