"""Snakemake adapter: lmship.genai_model.genai_model; the builder's model folder is the rule's artifact folder."""

from pathlib import Path

from lmship.backends import refuse_if_not_applicable
from lmship.genai_model import genai_model
from lmship.records import run_job

smk = snakemake  # noqa: F821


def work(out: Path) -> None:
    refuse_if_not_applicable(f"ort_genai_{smk.wildcards.genai}", Path(smk.input.model))
    genai_model(Path(smk.input.model), out, variant=smk.wildcards.genai)


run_job(smk, work)
