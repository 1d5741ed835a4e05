"""Recover from a Snakemake run that was killed (SIGKILL, OOM, power cut) while it held its lock.

Snakemake locks the working directory during a run and removes the lock at
the end; a killed run cannot, and the next run stops with a LockException
until someone passes ``--unlock``. The workflow records which process holds
the lock (pid, its start time and the host) when a run starts; the next run
removes the lock only if that process is gone, so a live run is never
disturbed. Standard library only: the Snakefile calls this while parsing.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

OWNER_FILE = Path(".snakemake") / "lmship-lock-owner.json"
LOCK_DIR = Path(".snakemake") / "locks"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc), or None if it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record_owner(workdir: Path = Path()) -> None:
    """Note that this process holds the working directory's lock."""
    path = workdir / OWNER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path.write_text(json.dumps({"pid": pid, "start": _start_time(pid), "host": socket.gethostname()}))


def remove_stale_lock(workdir: Path = Path()) -> str | None:
    """Remove the lock of a run that no longer exists; return a message saying so, else None."""
    locks = sorted((workdir / LOCK_DIR).glob("*.lock"))
    owner_file = workdir / OWNER_FILE
    if not locks or not owner_file.is_file():
        return None
    try:
        owner = json.loads(owner_file.read_text())
    except ValueError:
        return None
    if owner.get("host") != socket.gethostname():
        return None  # another machine's run: cannot tell whether it is alive
    alive = owner.get("start") is not None and _start_time(int(owner["pid"])) == owner["start"]
    if alive:
        return None
    for lock in locks:
        lock.unlink(missing_ok=True)
    owner_file.unlink(missing_ok=True)
    return (
        f"Removed the lock left by an interrupted run (pid {owner['pid']} no longer exists); "
        "outputs it left incomplete will be rebuilt."
    )
