"""Snakemake adapter: lmship.evaluate.evaluate on the backend's artifact folder; a folder that
holds a failure record (lmship.records), or an evaluation that fails, gives a failed accuracy JSON."""

from pathlib import Path

from lmship.evaluate import evaluate, failed_evaluation
from lmship.logs import log_to
from lmship.records import attempt, failure, metrics_of
from lmship.runtimes import artifact_of

smk = snakemake  # noqa: F821
folder = Path(smk.input.artifact)
facts = {
    "model": smk.wildcards.model,
    "backend": smk.wildcards.backend,
    "precision": smk.params.backend["precision"],
}


def work(_: Path) -> None:
    evaluate(
        smk.params.backend["runtime"],
        artifact_of(smk.params.backend["runtime"], folder),
        Path(smk.input.inputs),
        Path(smk.input.reference),
        Path(smk.output.json),
        tiers=dict(smk.params.tiers),
        threads=smk.threads,
        stage_json=metrics_of(folder),
        options=dict(smk.params.backend.get("options") or {}),
        **facts,
    )


with log_to(smk.log[0]):
    record = failure(folder)
    if record is None:
        record = attempt(work, log_path=smk.log[0], stage="evaluate")
    if record is not None:
        failed_evaluation(
            Path(smk.output.json),
            record,
            seq_len=int(smk.wildcards.seq),
            runtime=smk.params.backend["runtime"],
            **facts,
        )
