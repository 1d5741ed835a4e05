"""The accuracy table (rule ``accuracy_table``): every format's agreement with PyTorch, one CSV row per
model, sequence length and backend, from the ``evaluate`` JSONs."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from .cli import command
from .files import atomic_output, read_json
from .status import (
    OK,
    one_line,
)

log = logging.getLogger(__name__)

ACCURACY_COLUMNS = [
    "model",
    "seq_len",
    "backend",
    "precision",
    "tier",
    "top1_pct",
    "top1_ci95_low",
    "top1_ci95_high",
    "kld_mean",
    "kld_p99",
    "kld_max",
    "perplexity",
    "perplexity_reference",
    "ppl_change_pct",
    "text_positions",
    "top1_agreement_pct",
    "top1_random_pct",
    "kld_mean_random",
    "max_abs_diff",
    "cosine_similarity",
    "tier_missed",
    "status",
    "failed_at",
    "reason",
    "log",
]


def accuracy_table(jsons: list[Path], out_csv: Path) -> Path:
    """Gather per-backend accuracy JSONs into one CSV (a failed record: its stage, reason and log, no figures)."""
    rows = []
    for path in jsons:
        r = read_json(path)
        row = {k: r.get(k) for k in ACCURACY_COLUMNS}
        row["status"] = r.get("status") or OK
        row["reason"] = one_line(r.get("reason"))
        row["tier_missed"] = "; ".join(f"{t}: {', '.join(v)}" for t, v in (r.get("tier_missed") or {}).items())
        rows.append(row)
    with atomic_output(Path(out_csv)) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ACCURACY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return Path(out_csv)


#: ``python -m lmship accuracy_table``: its options are the function's parameters.
main = command(accuracy_table)
