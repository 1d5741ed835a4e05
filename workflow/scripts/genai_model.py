"""Snakemake adapter: lmship.genai_model.genai_model; the builder's model folder is the rule's artifact folder."""

from pathlib import Path

from lmship.genai_model import genai_model
from lmship.records import run_job

smk = snakemake  # noqa: F821
run_job(smk, lambda out: genai_model(Path(smk.input.model), out, variant=smk.wildcards.genai))
