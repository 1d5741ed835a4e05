"""Run the real Snakemake workflow in a temporary folder and read its dry-run plans."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from lmship.backends import BACKENDS

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"

TINY_ARCH = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 320,
}


#: The peers' rows (vendors' converters: llama.cpp, ORT GenAI's builder, transformers' OpenVINO exporter):
#: tests/test_peer_rows.py runs them through the workflow; the other workflow tests leave them out.
PEERS = [b for b, x in BACKENDS.items() if x.made_by != "lmship"]


def tiny_config(**overrides) -> dict:
    config = {
        "models": {"tiny": {"source": "random", "seed": 0, "architecture": TINY_ARCH}},
        "backends": [b for b in BACKENDS if b not in PEERS],
        "seq_lens": [16],
        "eval": {"text_samples": 2, "random_samples": 1, "seed": 0},
        "benchmark": {"threads": [1, 2], "rounds": 2, "warmup": 1, "repeats": 3, "min_seconds": 0},
        # TFLite runs the prompt through decode steps here (one SavedModel less per model);
        # tests/test_generation.py converts the prefill graph to TFLite too.
        "generation": {"prompt_tokens": 8, "max_len": 24, "new_tokens": 8, "prompts": 2, "tflite_prefill": False},
    }
    config.update(overrides)
    return config


def write_config(workdir: Path, config: dict) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def snakemake(workdir: Path, *args: str, timeout: float = 1800, check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake on the repository's Snakefile with ``workdir`` as working directory."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def planned_jobs(output: str) -> dict[str, int]:
    """Parse the 'Job stats' table of a (dry-)run into {rule: count}."""
    jobs: dict[str, int] = {}
    lines = output.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
    except StopIteration:
        return jobs
    for line in lines[start + 3 :]:
        m = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not m:
            break
        if m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
    return jobs
