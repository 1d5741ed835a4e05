"""Snakemake adapter: lmship.evaluate.evaluate_backend."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.evaluate import evaluate_backend
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    evaluate_backend(
        smk.params.backend["runtime"],
        Path(smk.input.artifact),
        Path(smk.input.inputs),
        Path(smk.input.reference),
        Path(smk.input.reference_metrics),
        Path(smk.output.json),
        model=smk.wildcards.model,
        backend=smk.wildcards.backend,
        precision=smk.params.backend["precision"],
        tolerance=dict(smk.params.tolerance),
    )
