"""The per-rule conda env files agree with the default install, and each one resolves.

No conda channel is reachable here, so the pip section of each env file is
resolved with ``pip install --dry-run`` against PyPI instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))

# Deliberate differences from the default install (envs/requirements.txt), with the reason.
# onnx2tf 1.29.24 pins onnxruntime 1.23.0, ai-edge-litert 2.1.0, onnx 1.19.1 and numpy 1.26.4
# for the whole default environment; the timing rules run in their own env under
# --sdm conda, so there they measure current runtimes.
DELIBERATE = {
    "runtimes.yaml": {
        "onnxruntime": "1.32.0",
        "ai-edge-litert": "2.3.0",
        "onnx": "1.23.2",
        "numpy": "2.4.6",
    },
}


def _pip_section(path: Path) -> list[str]:
    env = yaml.safe_load(path.read_text())
    for dep in env["dependencies"]:
        if isinstance(dep, dict) and "pip" in dep:
            return dep["pip"]
    return []


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def test_every_rule_names_an_existing_env_file():
    rules = "\n".join(p.read_text() for p in (REPO / "workflow" / "rules").glob("*.smk"))
    named = set(re.findall(r'conda:\s*\n\s*"\.\./\.\./envs/([^"]+)"', rules))
    assert named, "no conda: directives found"
    assert named <= {p.name for p in ENVS}
    assert {p.name for p in ENVS} <= named, "an env file no rule uses"
    # every rule that runs code has an env
    for block in re.split(r"\nrule ", rules)[1:]:
        if "script:" in block or "shell:" in block:
            assert "conda:" in block, block.splitlines()[0]


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_pins_match_the_default_install(env_file):
    pins = _pins(_pip_section(env_file))
    assert pins, f"{env_file.name} pins nothing"
    unpinned = [
        line for line in _pip_section(env_file) if not line.startswith("-") and "==" not in line and line.strip()
    ]
    assert not unpinned, f"{env_file.name}: unpinned {unpinned}"
    default = _pins((REPO / "envs" / "requirements.txt").read_text().splitlines())
    deliberate = DELIBERATE.get(env_file.name, {})
    for name, pinned in pins.items():
        if name in deliberate:
            assert pinned == deliberate[name], (env_file.name, name)
            continue
        installed = version(name)
        assert installed.split("+")[0] == pinned, f"{env_file.name}: {name}=={pinned}, default install has {installed}"
        if name in default:
            assert default[name] == pinned


@pytest.mark.parametrize("env_file", ENVS, ids=lambda p: p.name)
def test_env_resolves_with_pip(env_file, tmp_path):
    reqs = [line for line in _pip_section(env_file) if not line.startswith("--")]
    (tmp_path / "req.txt").write_text("\n".join(reqs) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "-q",
            "-r",
            str(tmp_path / "req.txt"),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
