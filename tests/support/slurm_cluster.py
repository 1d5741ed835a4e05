"""Start and stop a throw-away one-node SLURM cluster on localhost.

Meant for CI tests of Snakemake workflows that use the ``slurm`` executor
plugin. Needs root and Debian 12 (SLURM 22.05 from ``slurmctld``, ``slurmd``,
``slurm-client`` and ``munge``; installed on first use if missing). Does not
need systemd: the daemons are started directly, in the foreground, as child
processes of the caller, and are stopped by pid when the context exits.

Usage::

    from cluster import local_slurm, job_records, run_bounded

    with local_slurm(Path("/tmp/slurm-ci")) as info:
        run_bounded(["snakemake", "--executor", "slurm", ...], timeout=600)
        for rec in job_records(info):
            print(rec["job_id"], rec["comment"], rec["cpus"], rec["mem_mb"])

Everything the cluster writes (state, spool, logs, pid files, job records)
lives under ``workdir``; ``workdir/state`` is wiped at every start, so each
cluster starts with an empty queue and job ids counting from 1. The only
files written outside ``workdir`` are ``/etc/slurm/slurm.conf`` (an existing
one is backed up and put back on exit; no cgroup.conf is needed because the
cluster uses proctrack/linuxproc and task/none), ``/run/munge`` and, if it
was missing, ``/etc/munge/munge.key``. A munged that already works is reused
and left running; daemons this harness starts are always stopped.

Job records come from SLURM itself, not from Snakemake:

* ``jobcomp/filetxt`` (``info.jobcomp_file``): one line per finished job with
  name, final state, exit code, time limit (minutes), partition, node,
  account and ``Tres=cpu=N,mem=NM,...`` (allocated CPUs and memory);
* a ``PrologSlurmctld``/``EpilogSlurmctld`` hook (``info.jobinfo_file``) that
  appends ``scontrol show job -o <id>`` for every job when it starts and when
  it ends; this adds the ``Comment`` (the Snakemake slurm plugin puts
  ``rule_<name>`` there; jobcomp does not record it) and ``MinMemoryNode``;
* while the cluster runs, a live ``scontrol show job -o``.

:func:`job_records` merges them into one dict per job.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ClusterInfo",
    "SlurmHarnessError",
    "ensure_installed",
    "job_records",
    "local_slurm",
    "run_bounded",
]

SLURM_ETC = Path("/etc/slurm")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN = Path("/run/munge")
DEBIAN_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
REQUIRED_BINARIES = (
    "slurmctld",
    "slurmd",
    "sinfo",
    "sbatch",
    "squeue",
    "scontrol",
    "scancel",
    "munged",
    "munge",
    "unmunge",
)
NODE_NAME = "localhost"
CTLD_PORT = 6817
SLURMD_PORT = 6818


class SlurmHarnessError(RuntimeError):
    """The local cluster could not be installed, started or queried."""


@dataclass(frozen=True)
class ClusterInfo:
    """What a test needs to know about the running cluster."""

    workdir: Path
    partition: str
    node: str
    cpus: int
    mem_mb: int
    conf_file: Path
    jobcomp_file: Path
    """``jobcomp/filetxt`` output: one line per finished job."""
    jobinfo_file: Path
    """``scontrol show job -o`` dumps taken by the ctld prolog/epilog."""
    log_dir: Path
    pids: dict[str, int] = field(default_factory=dict)
    """Daemons started by this harness (name -> pid)."""


# --------------------------------------------------------------------------
# installation


def missing_binaries(binaries: Sequence[str]) -> list[str]:
    return [b for b in binaries if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def ensure_debian_packages(
    packages: Sequence[str], binaries: Sequence[str], error: type[Exception], timeout: float = 600.0
) -> None:
    """Install Debian's ``packages`` if any of ``binaries`` is missing; raise ``error`` if that fails."""
    missing = missing_binaries(binaries)
    if not missing:
        return
    if os.geteuid() != 0:
        raise error(f"missing {missing} and not root to install them")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *packages]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise error(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    still = missing_binaries(binaries)
    if still:
        raise error(f"still missing after apt-get install: {still}")


def ensure_installed(timeout: float = 600.0) -> None:
    """Install the Debian packages if any SLURM/munge binary is missing."""
    ensure_debian_packages(DEBIAN_PACKAGES, REQUIRED_BINARIES, SlurmHarnessError, timeout)


# --------------------------------------------------------------------------
# configuration


_HOOK = """#!/bin/sh
# Written by tests/slurm/cluster.py: record SLURM's own view of each job.
# Runs as PrologSlurmctld and EpilogSlurmctld (on the controller, as root).
phase=prolog
[ -n "$SLURM_SCRIPT_CONTEXT" ] && phase="$SLURM_SCRIPT_CONTEXT"
line=$(scontrol show job -o "$SLURM_JOB_ID" 2>&1 | head -n 1)
printf 'Phase=%s %s\\n' "$phase" "$line" >> {out}
exit 0
"""


_CONF_MARKER = "Written by tests/slurm/cluster.py"


def _slurm_conf(
    *, workdir: Path, state: Path, partition: str, cpus: int, mem_mb: int, hook: Path, jobcomp: Path, log_dir: Path
) -> str:
    return f"""# {_CONF_MARKER} for a local CI cluster; removed on exit.
ClusterName=localci
SlurmctldHost={NODE_NAME}
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={state}/ctld
SlurmdSpoolDir={state}/slurmd
SlurmctldPidFile={workdir}/slurmctld.pid
SlurmdPidFile={workdir}/slurmd.pid
SlurmctldLogFile={log_dir}/slurmctld.log
SlurmdLogFile={log_dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={jobcomp}
PrologSlurmctld={hook}
EpilogSlurmctld={hook}
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=300
KillWait=5
MailProg=/bin/true
MpiDefault=none
NodeName={NODE_NAME} NodeAddr=127.0.0.1 CPUs={cpus} Boards=1 SocketsPerBoard=1 \
CoresPerSocket={cpus} ThreadsPerCore=1 RealMemory={mem_mb} State=UNKNOWN
PartitionName={partition} Nodes={NODE_NAME} Default=YES MaxTime=INFINITE State=UP
"""


# --------------------------------------------------------------------------
# process helpers


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"  ({path}: {exc})"
    return "\n".join("  " + t for t in text[-lines:]) or f"  ({path} is empty)"


def _stop_pid(pid: int, proc: subprocess.Popen[bytes] | None, grace: float, sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to ``pid``, wait up to ``grace`` s, then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _pids_named(name: str) -> set[int]:
    return {int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _comm(int(p.name)) == name}


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _kill_stale(workdir: Path) -> None:
    """Stop daemons a previous, killed harness run left behind.

    Only pids recorded in this workdir's pid files whose process name still
    matches are touched.
    """
    for name, comm in (("slurmd.pid", "slurmd"), ("slurmctld.pid", "slurmctld"), ("munged.pid", "munged")):
        pidfile = workdir / name
        try:
            pid = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        if _alive(pid) and _comm(pid) == comm:
            _stop_pid(pid, None, grace=10)
        pidfile.unlink(missing_ok=True)


def _munge_works() -> bool:
    try:
        enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=5, check=False)
        if enc.returncode != 0:
            return False
        dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=5, check=False)
        return dec.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _ensure_munge_key() -> None:
    if MUNGE_KEY.exists():
        return
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mungekey", "--create", f"--keyfile={MUNGE_KEY}"], check=True, capture_output=True, timeout=30)
    shutil.chown(MUNGE_KEY, "munge", "munge")
    MUNGE_KEY.chmod(0o600)


def _sinfo_state(partition: str) -> str:
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-p", partition, "-o", "%t"], capture_output=True, text=True, timeout=10, check=False
        )
    except subprocess.TimeoutExpired:
        return "(sinfo timed out)"
    return proc.stdout.strip() if proc.returncode == 0 else f"(sinfo: {proc.stderr.strip()})"


def _start_reaper(parent: int, deadline: float, pids: Sequence[int]) -> subprocess.Popen[bytes]:
    """Start a watchdog that kills ``pids`` if ``parent`` dies or at ``deadline``.

    Guards against the test process being SIGKILLed (no ``finally`` runs) and
    bounds the cluster's lifetime. It is stopped in the normal teardown.
    """
    code = (
        "import os,sys,time,signal\n"
        "parent=int(sys.argv[1]); deadline=float(sys.argv[2])\n"
        "pids=[int(p) for p in sys.argv[3:]]\n"
        "def alive(p):\n"
        "    try:\n"
        "        return open(f'/proc/{p}/stat').read().split(') ',1)[1][0]!='Z'\n"
        "    except Exception:\n"
        "        return False\n"
        "while alive(parent) and time.time()<deadline:\n"
        "    time.sleep(1)\n"
        "for p in pids:\n"
        "    try: os.kill(p, signal.SIGTERM)\n"
        "    except Exception: pass\n"
        "time.sleep(5)\n"
        "for p in pids:\n"
        "    try: os.kill(p, signal.SIGKILL)\n"
        "    except Exception: pass\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(parent), str(deadline), *(str(p) for p in pids)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# --------------------------------------------------------------------------
# the context manager


@contextlib.contextmanager
def local_slurm(
    workdir: Path,
    cpus: int = 2,
    mem_mb: int = 16000,
    timeout: float = 60.0,
    partition: str = "debug",
    max_lifetime: float = 3600.0,
    handle_sigterm: bool = True,
) -> Iterator[ClusterInfo]:
    """Run a one-node SLURM cluster on localhost for the ``with`` block.

    Args:
        workdir: directory for state, logs and job records (created).
        cpus: CPUs the node advertises (may exceed the real core count).
        mem_mb: the node's RealMemory in MB (default leaves ~8 GB of the
            machine's 24 GB to everything else).
        timeout: bound, in seconds, on waiting for the node to become idle
            (installation has its own bound of 600 s per apt-get call).
        partition: name of the single (default) partition.
        max_lifetime: a watchdog process kills the daemons after this many
            seconds, or as soon as the calling process dies.
        handle_sigterm: while the cluster runs, turn SIGTERM into
            KeyboardInterrupt (main thread, default handler only) so that the
            teardown still runs when CI terminates the test process.

    Yields:
        ClusterInfo describing the running cluster.

    Raises:
        SlurmHarnessError: if not root, ports are taken, or the node does not
            become idle within ``timeout`` (the message has the log tails).
    """
    if cpus < 1 or mem_mb < 100:
        raise ValueError(f"need cpus >= 1 and mem_mb >= 100, got {cpus}, {mem_mb}")
    if os.geteuid() != 0:
        raise SlurmHarnessError("local_slurm needs root (daemons run as root)")
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ensure_installed()
    _kill_stale(workdir)
    for port in (CTLD_PORT, SLURMD_PORT):
        if _port_in_use(port):
            raise SlurmHarnessError(f"port {port} already in use: another slurmctld/slurmd runs here")

    state = workdir / "state"
    shutil.rmtree(state, ignore_errors=True)
    (state / "ctld").mkdir(parents=True)
    (state / "slurmd").mkdir(parents=True)
    log_dir = workdir / "log"
    log_dir.mkdir(exist_ok=True)
    for old in log_dir.glob("*.log"):
        old.unlink()
    jobcomp = workdir / "jobcomp.txt"
    jobinfo = workdir / "jobinfo.txt"
    jobcomp.write_text("")
    jobinfo.write_text("")
    hook = workdir / "ctld_hook.sh"
    hook.write_text(_HOOK.replace("{out}", _shquote(str(jobinfo))))
    hook.chmod(0o755)

    conf = SLURM_ETC / "slurm.conf"
    conf_text = _slurm_conf(
        workdir=workdir,
        state=state,
        partition=partition,
        cpus=cpus,
        mem_mb=mem_mb,
        hook=hook,
        jobcomp=jobcomp,
        log_dir=log_dir,
    )
    (workdir / "slurm.conf").write_text(conf_text)  # copy for inspection

    procs: dict[str, subprocess.Popen[bytes]] = {}
    backups: dict[Path, Path | None] = {}
    reaper: subprocess.Popen[bytes] | None = None
    steps_before = _pids_named("slurmstepd")
    old_term = None
    if (
        handle_sigterm
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        old_term = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
    try:
        SLURM_ETC.mkdir(parents=True, exist_ok=True)
        backups[conf] = _backup(conf)
        conf.write_text(conf_text)

        # munge: reuse a working munged, otherwise start our own.
        if not _munge_works():
            _ensure_munge_key()
            MUNGE_RUN.mkdir(parents=True, exist_ok=True)
            shutil.chown(MUNGE_RUN, "munge", "munge")
            procs["munged"] = _spawn(["/usr/sbin/munged", "-F", "--force"], log_dir / "munged.out", user="munge")
            (workdir / "munged.pid").write_text(f"{procs['munged'].pid}\n")
            _wait_for(_munge_works, 10, "munged to answer", procs, log_dir)

        procs["slurmctld"] = _spawn(["slurmctld", "-D", "-i"], log_dir / "slurmctld.out")
        _wait_for(lambda: _port_in_use(CTLD_PORT), timeout, "slurmctld port", procs, log_dir)
        procs["slurmd"] = _spawn(["slurmd", "-D", "-N", NODE_NAME], log_dir / "slurmd.out")
        _wait_for(lambda: _sinfo_state(partition) == "idle", timeout, "node idle in sinfo", procs, log_dir)

        pids = {n: p.pid for n, p in procs.items()}
        reaper = _start_reaper(
            os.getpid(), time.time() + max_lifetime, [pids[n] for n in ("slurmd", "slurmctld", "munged") if n in pids]
        )
        yield ClusterInfo(
            workdir=workdir,
            partition=partition,
            node=NODE_NAME,
            cpus=cpus,
            mem_mb=mem_mb,
            conf_file=conf,
            jobcomp_file=jobcomp,
            jobinfo_file=jobinfo,
            log_dir=log_dir,
            pids=pids,
        )
    finally:
        if old_term is not None:  # don't let a 2nd SIGTERM cut the teardown short
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _teardown(procs, partition, steps_before, workdir)
        if reaper is not None:
            _stop_pid(reaper.pid, reaper, grace=2, sig=signal.SIGKILL)
        for target, backup in backups.items():
            _restore(target, backup)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _sigterm_to_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _shquote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _spawn(cmd: list[str], out: Path, user: str | None = None) -> subprocess.Popen[bytes]:
    with open(out, "ab") as fh:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            user=user,
            group=user,
            extra_groups=[] if user else None,
        )


def _wait_for(
    cond: Callable[[], bool], timeout: float, what: str, procs: dict[str, subprocess.Popen[bytes]], log_dir: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dead = [n for n, p in procs.items() if p.poll() is not None]
        if dead:
            raise SlurmHarnessError(
                f"{', '.join(dead)} exited early while waiting for {what}\n" + _diagnostics(log_dir)
            )
        if cond():
            return
        time.sleep(0.25)
    raise SlurmHarnessError(f"timed out after {timeout:.0f}s waiting for {what}\n" + _diagnostics(log_dir))


def _diagnostics(log_dir: Path) -> str:
    parts = []
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        node = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t %E"], capture_output=True, text=True, timeout=5, check=False
        )
        parts.append(f"--- sinfo -N (node state, reason): {(node.stdout or node.stderr).strip()}")
    for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out", "munged.out"):
        path = log_dir / name
        if path.exists():
            parts.append(f"--- tail of {path}\n{_log_tail(path)}")
    return "\n".join(parts)


def _teardown(procs: dict[str, subprocess.Popen[bytes]], partition: str, steps_before: set[int], workdir: Path) -> None:
    """Cancel jobs, then stop slurmd, slurmctld, munged (only ours)."""
    if "slurmctld" in procs and procs["slurmctld"].poll() is None:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["scancel", "--partition", partition], timeout=10, capture_output=True, check=False)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                q = subprocess.run(
                    ["squeue", "-h", "-t", "PD,R,CG,CF,S", "-o", "%i"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                )
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.5)
    for name in ("slurmd", "slurmctld", "munged"):
        proc = procs.get(name)
        if proc is None:
            continue
        _stop_pid(proc.pid, proc, grace=15)
    # job step daemons started by our slurmd (they daemonize, so not children)
    for pid in _pids_named("slurmstepd") - steps_before:
        _stop_pid(pid, None, grace=5)
    for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
        (workdir / name).unlink(missing_ok=True)


def _backup(target: Path) -> Path | None:
    """Copy ``target`` aside; None if there is no original to put back."""
    backup = target.with_name(target.name + ".local_slurm-backup")
    if backup.exists():  # left by a killed run: it holds the real original
        return backup
    if not target.exists() or _CONF_MARKER in target.read_text(errors="replace"):
        return None  # nothing, or our own file left by a killed run
    shutil.copy2(target, backup)
    return backup


def _restore(target: Path, backup: Path | None) -> None:
    with contextlib.suppress(OSError):
        if backup is None:
            target.unlink(missing_ok=True)
        else:
            shutil.move(str(backup), target)


# --------------------------------------------------------------------------
# job records


_KV = re.compile(r"(\S+?)=(\S*)")


def _parse_kv(line: str) -> dict[str, str]:
    """Parse ``Key=Value Key=Value`` (values without spaces)."""
    return {m.group(1): m.group(2) for m in _KV.finditer(line)}


def _mem_to_mb(text: str | None) -> int | None:
    """'2000M' / '2G' / '1000' (MB) -> MB."""
    if not text:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]?)", text.strip())
    if not m:
        return None
    num = float(m.group(1))
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return round(num * factor)


def _tres(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    return dict(p.split("=", 1) for p in text.split(",") if "=" in p)


def _minutes(limit: str | None) -> int | None:
    """SLURM time limit ('[D-]HH:MM:SS', 'MM', 'UNLIMITED') -> minutes."""
    if not limit or limit in ("UNLIMITED", "Partition_Limit", "NONE"):
        return None
    if limit.isdigit():
        return int(limit)
    days = 0
    if "-" in limit:
        d, limit = limit.split("-", 1)
        days = int(d)
    parts = [int(p) for p in limit.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    h, m, s = parts
    return days * 1440 + h * 60 + m + (1 if s else 0)


def _cluster_running(info: ClusterInfo) -> bool:
    pid = info.pids.get("slurmctld")
    return pid is not None and _alive(pid) and _comm(pid) == "slurmctld"


def _live_scontrol(info: ClusterInfo) -> list[str]:
    """``scontrol show job -o`` for all jobs slurmctld still holds (MinJobAge)."""
    if not _cluster_running(info):
        return []
    try:
        proc = subprocess.run(
            ["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=15, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def job_records(info: ClusterInfo) -> list[dict[str, object]]:
    """Every job SLURM knows on this cluster, from SLURM's own records.

    Sources, merged per job id (later ones win field by field):

    1. the ``PrologSlurmctld`` / ``EpilogSlurmctld`` dumps of
       ``scontrol show job -o`` (``info.jobinfo_file``; jobs that never
       started, e.g. cancelled while pending, have none);
    2. a live ``scontrol show job -o`` while the cluster runs (slurmctld keeps
       finished jobs for ``MinJobAge`` = 300 s);
    3. the ``jobcomp/filetxt`` line (``info.jobcomp_file``), written when a
       job ends; it is the authority for the final state and exit code.

    Each dict has: ``job_id`` (int), ``name`` (the slurm plugin uses the
    Snakemake run UUID for every job of a run), ``comment`` (the plugin sets
    ``rule_<rule>`` or ``rule_<rule>_wildcards_<w>``), ``rule`` (parsed from
    the comment, or None), ``state``, ``exit_code`` (``"code:signal"``),
    ``cpus`` (allocated), ``mem_mb`` (allocated on the node, MB),
    ``mem_requested_mb`` (``--mem``), ``mem_per_cpu_mb`` (``--mem-per-cpu``,
    else None), ``time_limit_min`` (None if unlimited),
    ``partition``, ``account``, ``node``, ``work_dir``, ``submit_time``,
    ``start_time``, ``end_time`` (SLURM's ISO strings) and ``raw`` (the
    parsed source fields). Values containing spaces (job names, comments)
    are cut at the first space: the sources are space-separated key=value.
    """
    scontrol: dict[int, dict[str, str]] = {}
    lines: list[str] = []
    if info.jobinfo_file.exists():
        lines += info.jobinfo_file.read_text(errors="replace").splitlines()
    lines += _live_scontrol(info)
    for line in lines:
        kv = _parse_kv(line)
        if kv.get("JobId", "").isdigit():
            jid = int(kv["JobId"])
            scontrol[jid] = {**scontrol.get(jid, {}), **kv}
    jobcomp: dict[int, dict[str, str]] = {}
    if info.jobcomp_file.exists():
        for line in info.jobcomp_file.read_text(errors="replace").splitlines():
            kv = _parse_kv(line)
            if kv.get("JobId", "").isdigit():
                jobcomp[int(kv["JobId"])] = kv

    records: list[dict[str, object]] = []
    for jid in sorted(set(scontrol) | set(jobcomp)):
        sc = scontrol.get(jid, {})
        jc = jobcomp.get(jid, {})
        sc_tres = _tres(sc.get("AllocTRES") or sc.get("TRES"))
        jc_tres = _tres(jc.get("Tres"))
        mem = _mem_to_mb(jc_tres.get("mem")) or _mem_to_mb(sc_tres.get("mem")) or _mem_to_mb(sc.get("MinMemoryNode"))
        cpus_text = jc_tres.get("cpu") or sc.get("NumCPUs") or sc_tres.get("cpu") or jc.get("ProcCnt")
        comment = sc.get("Comment") or None
        rule = None
        if comment and comment.startswith("rule_"):
            rule = comment[len("rule_") :].split("_wildcards_", 1)[0]
        account = jc.get("Account") or sc.get("Account")
        records.append(
            {
                "job_id": jid,
                "name": jc.get("Name") or sc.get("JobName"),
                "comment": comment,
                "rule": rule,
                "state": jc.get("JobState") or sc.get("JobState"),
                "exit_code": jc.get("ExitCode") or sc.get("ExitCode"),
                "cpus": int(cpus_text) if cpus_text and cpus_text.isdigit() else None,
                "mem_mb": mem,
                "mem_requested_mb": _mem_to_mb(sc.get("MinMemoryNode")) or mem,
                "mem_per_cpu_mb": _mem_to_mb(sc.get("MinMemoryCPU")),
                "time_limit_min": _minutes(jc.get("TimeLimit") or sc.get("TimeLimit")),
                "partition": jc.get("Partition") or sc.get("Partition"),
                "account": None if account in (None, "", "(null)") else account,
                "node": jc.get("NodeList") or sc.get("NodeList"),
                "work_dir": jc.get("WorkDir") or sc.get("WorkDir"),
                "submit_time": jc.get("SubmitTime") or sc.get("SubmitTime"),
                "start_time": jc.get("StartTime") or sc.get("StartTime"),
                "end_time": jc.get("EndTime") or sc.get("EndTime"),
                "raw": {"jobcomp": jc, "scontrol": sc},
            }
        )
    return records


# --------------------------------------------------------------------------
# bounded command runner


def run_bounded(
    cmd: Sequence[str],
    timeout: float,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log: Path | None = None,
    interrupt_grace: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` with a hard time bound; return its result (output merged).

    On timeout (or if the caller is interrupted) sends SIGINT to the
    command's process group first (Snakemake ignores SIGTERM while its slurm
    executor polls; on SIGINT it scancels its jobs and exits, but only after
    its current status-check sleep, which grows by 10 s per idle poll), then
    SIGKILL after ``interrupt_grace`` s, and re-raises
    (``subprocess.TimeoutExpired`` on timeout). Jobs it leaves behind are
    cancelled by :func:`local_slurm`'s teardown anyway.
    """
    out_fh = open(log, "w") if log else None  # noqa: SIM115 (closed below)
    try:
        proc = subprocess.Popen(
            list(cmd),
            cwd=cwd,
            env=env,
            text=True,
            stdin=subprocess.DEVNULL,
            stdout=out_fh or subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except BaseException:  # timeout, KeyboardInterrupt, SIGTERM (see above)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.communicate(timeout=interrupt_grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
            raise
        if log is not None:
            out = log.read_text(errors="replace")
        return subprocess.CompletedProcess(list(cmd), proc.returncode, out or "", "")
    finally:
        if out_fh:
            out_fh.close()
