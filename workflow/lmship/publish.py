"""The front page's answer (rule ``publish``): the run's tables and figures copied into
``docs/results/<models>/`` (the run's models joined by ``+``).

``README.md`` shows each published run's ``ship.png`` and links the tables next to it, so every figure on the
front page is one the workflow wrote; ``snakemake publish`` refreshes the copies after a run (commit
them to change the front page). ``run.md`` says where and how the figures were measured: the machine,
the configuration's size of the run, and each rule's jobs and time, summed from Snakemake's own
``benchmark:`` records of that run.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from .files import atomic_output
from .host import cpu_flags, cpu_model, total_memory_mb

log = logging.getLogger(__name__)


def publish(files: list[Path], out_dir: Path, *, benchmarks: Path, facts: dict[str, str]) -> Path:
    """Copy ``files`` into ``out_dir`` and write ``out_dir/run.md``: the machine, ``facts`` (what was run)
    and per rule the jobs and their time from the ``benchmarks`` folder's TSV files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for src in map(Path, files):
        with atomic_output(out_dir / src.name) as tmp:
            shutil.copyfile(src, tmp)
    with atomic_output(out_dir / "run.md") as tmp:
        tmp.write_text(run_record(Path(benchmarks), facts))
    log.info("published %s into %s", ", ".join(Path(f).name for f in files), out_dir)
    return out_dir


def rule_times(benchmarks: Path) -> list[dict]:
    """Per rule (a folder of ``benchmarks/``, or a top-level TSV): jobs, summed wall time (s) and
    the largest peak RSS (MB) of its jobs, read from Snakemake's benchmark TSVs."""
    rows = []
    groups: dict[str, list[Path]] = {}
    for tsv in sorted(Path(benchmarks).rglob("*.tsv")):
        rule = tsv.parent.name if tsv.parent != Path(benchmarks) else tsv.stem
        groups.setdefault(rule, []).append(tsv)
    for rule, tsvs in groups.items():
        seconds, rss, jobs = 0.0, 0.0, 0
        for tsv in tsvs:
            with open(tsv, newline="") as fh:
                for rec in csv.DictReader(fh, delimiter="\t"):
                    seconds += _number(rec.get("s"))
                    rss = max(rss, _number(rec.get("max_rss")))
                    jobs += 1
        rows.append({"rule": rule, "jobs": jobs, "seconds": seconds, "max_rss_mb": rss})
    return sorted(rows, key=lambda r: -r["seconds"])


def run_record(benchmarks: Path, facts: dict[str, str]) -> str:
    """``run.md``: the machine, what was run and each rule's time."""
    memory = total_memory_mb()
    lines = [
        "# The run behind these figures",
        "",
        "Written by `snakemake publish` from the run's own records (`benchmarks/`); do not edit by hand.",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs"
        + (f", {memory / 1024:.0f} GB" if memory else "")
        + f" ({', '.join(cpu_flags()) or 'no vector flags read'})",
        f"- published: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        *(f"- {k}: {v}" for k, v in facts.items()),
        "",
        "Each rule's jobs and their wall time summed (jobs run side by side, so the run took less than the sum):",
        "",
        "| rule | jobs | time (min) | largest peak RSS (GB) |",
        "|---|---:|---:|---:|",
    ]
    times = rule_times(benchmarks)
    for r in times:
        lines.append(f"| `{r['rule']}` | {r['jobs']} | {r['seconds'] / 60:.1f} | {r['max_rss_mb'] / 1024:.1f} |")
    total = sum(r["seconds"] for r in times)
    lines += [f"| all | {sum(r['jobs'] for r in times)} | {total / 60:.1f} | |", ""]
    return "\n".join(lines)


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "NA", "-") else 0.0
    except ValueError:
        return 0.0
