"""Snakemake adapter: lmship.machine.measure."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parent))  # noqa: F821 (snakemake is injected)

from lmship.logs import log_to
from lmship.machine import measure

smk = snakemake  # noqa: F821
with log_to(smk.log[0]):
    measure(Path(smk.output.json), int(smk.wildcards.threads))
