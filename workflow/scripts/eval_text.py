"""Snakemake adapter: lmship.eval_text.eval_text."""

from pathlib import Path

from lmship.eval_text import eval_text
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    eval_text(Path(smk.output.text))
