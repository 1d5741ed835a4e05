"""Snakemake adapter: lmship.publish.publish."""

from pathlib import Path

from lmship.logs import log_to
from lmship.publish import publish

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    publish(
        [Path(p) for p in smk.input],
        Path(smk.output.folder),
        benchmarks=Path(smk.params.benchmarks),
        facts=dict(smk.params.facts),
    )
