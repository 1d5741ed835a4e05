"""Snakemake adapter: lmship.evaluate.evaluate."""

from pathlib import Path

from lmship.evaluate import evaluate
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    evaluate(
        smk.params.backend["runtime"],
        Path(smk.input.artifact),
        Path(smk.input.inputs),
        Path(smk.input.reference),
        Path(smk.output.json),
        model=smk.wildcards.model,
        backend=smk.wildcards.backend,
        precision=smk.params.backend["precision"],
        tiers=dict(smk.params.tiers),
        threads=smk.threads,
        stage_json=Path(stage) if (stage := getattr(smk.input, "stage", None)) else None,
    )
