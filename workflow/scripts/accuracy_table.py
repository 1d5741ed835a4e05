"""Snakemake adapter: lmship.evaluate.accuracy_table."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.evaluate import accuracy_table
from lmship.logs import log_to

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    accuracy_table([Path(p) for p in smk.input.jsons], Path(smk.output.csv))
