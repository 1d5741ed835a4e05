"""The lock file, the per-rule conda env files and the installed packages agree.

envs/requirements.lock (made by pip-compile from envs/requirements.in) is the
one source of versions: every env file's pins are checked against it, not
against whatever pip happened to install, so an upstream release cannot make
them disagree. No conda channel is reachable here, so the pip section of each
env file is resolved with ``pip install --dry-run`` against PyPI instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))

LOCK = REPO / "envs" / "requirements.lock"
TOP_LEVEL = REPO / "envs" / "requirements.in"

# Deliberate differences from the lock, with the reason.
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
    """name -> version of every `name==version` line (a lock's trailing ` \\` and hashes ignored)."""
    pins = {}
    for line in lines:
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", line.strip())
        if m:
            pins[m.group(1).lower().replace("_", "-")] = m.group(2)
    return pins


def _public(v: str) -> str:
    """The version without its local label: torch 2.13.0+cpu is torch==2.13.0."""
    return v.split("+")[0]


PEERS_LOCK = REPO / "envs" / "peers.lock"


def _lock() -> dict[str, str]:
    return _pins(LOCK.read_text().splitlines())


def _all_locks() -> dict[str, str]:
    """The default lock and the peers' lock (installed on top of it)."""
    return {**_pins(PEERS_LOCK.read_text().splitlines()), **_lock()}


def test_lock_pins_every_package_with_hashes():
    entries: list[str] = []
    for line in LOCK.read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            entries.append(line)
        elif entries and line.strip().startswith("--hash="):
            entries[-1] += " " + line.strip()
    assert len(entries) > 100, "the lock should hold the whole environment, transitive packages included"
    for entry in entries:
        assert re.match(r"^[A-Za-z0-9_.\-]+==\S+", entry), f"not pinned with ==: {entry.splitlines()[0]}"
        assert "--hash=sha256:" in entry, f"no hash: {entry.splitlines()[0]}"


def test_lock_agrees_with_the_top_level_list():
    lock = _lock()
    for name, pinned in _pins(TOP_LEVEL.read_text().splitlines()).items():
        assert name in lock, f"{name} is in requirements.in but not in the lock: run `bash envs/lock`"
        assert _public(lock[name]) == _public(pinned), (
            f"requirements.in has {name}=={pinned}, the lock {lock[name]}: run `bash envs/lock`"
        )


def test_installed_packages_are_the_lock():
    """What this environment runs is exactly what the lock says (CI installs only the lock)."""
    wrong = {}
    for name, pinned in _lock().items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            wrong[name] = (pinned, "missing")
            continue
        if installed != pinned:
            wrong[name] = (pinned, installed)
    assert not wrong, f"installed differs from envs/requirements.lock (lock, installed): {wrong}"


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
def test_env_pins_match_the_lock(env_file):
    pins = _pins(_pip_section(env_file))
    assert pins, f"{env_file.name} pins nothing"
    unpinned = [
        line for line in _pip_section(env_file) if not line.startswith("-") and "==" not in line and line.strip()
    ]
    assert not unpinned, f"{env_file.name}: unpinned {unpinned}"
    lock = _all_locks()
    deliberate = DELIBERATE.get(env_file.name, {})
    for name, pinned in pins.items():
        if name in deliberate:
            assert pinned == deliberate[name], (env_file.name, name)
            continue
        assert name in lock, f"{env_file.name}: {name} is not in envs/requirements.lock or envs/peers.lock"
        assert _public(lock[name]) == pinned, f"{env_file.name}: {name}=={pinned}, the lock has {lock[name]}"


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
