"""Snakemake adapter: lmship.timing.time_backend."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.logs import log_to
from lmship.timing import time_backend

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    time_backend(
        smk.params.backend["runtime"],
        Path(smk.input.artifact),
        Path(smk.input.inputs),
        Path(smk.output.csv),
        model=smk.wildcards.model,
        backend=smk.wildcards.backend,
        precision=smk.params.backend["precision"],
        threads=int(smk.wildcards.threads),
        warmup=smk.params.warmup,
        repeats=smk.params.repeats,
        min_seconds=smk.params.min_seconds,
    )
