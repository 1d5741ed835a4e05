"""A throw-away Docker daemon, a registry-free base image and the host's pip sources, for CI.

Needs root on Debian 12. :func:`ensure_installed` installs ``docker.io`` and
``debootstrap`` from Debian if missing. :func:`local_docker` starts ``dockerd``
by hand (apt starts no services here) with its data, state and socket in a
private folder, no iptables and no bridge (containers and builds use
``--network none`` or ``--network host``), and always stops it again: by pid,
then its containerd, then unmounts and deletes the folder. A watchdog process
kills the daemons if the test process dies or the deadline passes.

No image registry is needed: :func:`build_base_image` makes a Debian 12 root
file system with ``debootstrap`` from the mirror apt already uses and imports
it with ``docker import``. :func:`pip_sources` serves the host's local pip
sources (``find-links`` folders and ``file://`` indexes from ``pip config``)
over HTTP on 127.0.0.1, so that ``pip`` inside ``docker build --network host``
sees the same packages as the host.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

from .slurm_cluster import _start_reaper, ensure_debian_packages

DEBIAN_PACKAGES = ("docker.io", "debootstrap", "patchelf")
REQUIRED_BINARIES = ("dockerd", "docker", "debootstrap", "patchelf")
SUITE = "bookworm"


class ContainerHarnessError(RuntimeError):
    """The container tooling could not be installed, started or used."""


# --------------------------------------------------------------------------
# installation


def ensure_installed(timeout: float = 600.0) -> None:
    """Install Debian's docker.io, debootstrap and patchelf if a binary is missing."""
    ensure_debian_packages(DEBIAN_PACKAGES, REQUIRED_BINARIES, ContainerHarnessError, timeout)


def _binary(name: str) -> str:
    if name == "docker" and Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"  # Debian's client, the same release as its dockerd
    found = shutil.which(name) or (f"/usr/sbin/{name}" if Path("/usr/sbin", name).exists() else None)
    if found is None:
        raise ContainerHarnessError(f"{name} not found")
    return found


# --------------------------------------------------------------------------
# the Debian mirror apt uses


def debian_mirror(apt_dir: Path = Path("/etc/apt"), suite: str = SUITE) -> str:
    """The first apt source that serves ``suite`` with ``main`` (one-line or deb822 format)."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                if (
                    "deb" in fields.get("Types", "").split()
                    and suite in fields.get("Suites", "").split()
                    and "main" in fields.get("Components", "").split()
                    and fields.get("Enabled", "yes") != "no"
                ):
                    return fields["URIs"].split()[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 4 and words[0] == "deb" and words[2] == suite and "main" in words[3:]:
                    return words[1]
    raise ContainerHarnessError(f"no apt source for '{suite} main' in {apt_dir}/sources.list(.d)")


# --------------------------------------------------------------------------
# the daemon


@dataclass
class Docker:
    """A running private dockerd: ``env`` points the docker CLI at it."""

    root: Path
    socket: Path
    env: dict[str, str]
    log: Path

    @property
    def cli(self) -> str:
        return _binary("docker")

    def run(self, *args: str, timeout: float, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
        cmd = [_binary("docker"), *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False, **kw)
        if check and proc.returncode != 0:
            raise ContainerHarnessError(
                f"{' '.join(cmd)[:500]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _stop(pids: list[int], grace: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _unmount_below(root: Path) -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    prefix = str(root.resolve()) + "/"
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False, timeout=60)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def local_docker(lifetime: float, start_timeout: float = 90.0) -> Iterator[Docker]:
    """Start a private dockerd for at most ``lifetime`` seconds; stop it and delete its data on exit.

    The folder is short (``/tmp/lmship-docker-*``): containerd's socket lives
    under it and Unix socket paths are limited to 107 bytes.
    """
    if os.geteuid() != 0:
        raise ContainerHarnessError("dockerd needs root")
    root = Path(tempfile.mkdtemp(prefix="lmship-docker-", dir="/tmp"))
    socket = root / "docker.sock"
    log = root / "dockerd.log"
    cmd = [
        _binary("dockerd"),
        "--data-root",
        str(root / "data"),
        "--exec-root",
        str(root / "exec"),
        "--pidfile",
        str(root / "dockerd.pid"),
        "-H",
        f"unix://{socket}",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        "--ip-masq=false",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
    env.update(DOCKER_HOST=f"unix://{socket}", DOCKER_BUILDKIT="0", DOCKER_CONFIG=str(root / "client"))
    docker = Docker(root=root, socket=socket, env=env, log=log)
    with open(log, "wb") as out:
        daemon = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    reaper = None
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if daemon.poll() is not None:
                raise ContainerHarnessError(f"dockerd exited ({daemon.returncode}):\n{_log_tail(log)}")
            if socket.exists() and docker.run("info", timeout=30, check=False).returncode == 0:
                break
            if time.monotonic() > deadline:
                raise ContainerHarnessError(f"dockerd not answering after {start_timeout:.0f} s:\n{_log_tail(log)}")
            time.sleep(1)
        reaper = _start_reaper(os.getpid(), time.time() + lifetime, [daemon.pid, *_children(daemon.pid)])
        yield docker
    finally:
        with contextlib.suppress(Exception):
            running = docker.run("ps", "-q", timeout=30, check=False).stdout.split()
            if running:
                docker.run("kill", *running, timeout=60, check=False)
        helpers = _children(daemon.pid)  # containerd
        _stop([daemon.pid], grace=60)
        daemon.wait(timeout=30)
        _stop([p for p in helpers if _alive(p)], grace=15)
        if reaper is not None:
            reaper.kill()
            reaper.wait()
        _unmount_below(root)
        shutil.rmtree(root, ignore_errors=True)


# --------------------------------------------------------------------------
# the base image


def build_base_image(docker: Docker, tag: str, workdir: Path, timeout: float = 600.0) -> None:
    """Debian 12 minbase with python3 and its venv module, from apt's mirror, as image ``tag``."""
    rootfs = workdir / "rootfs"
    cmd = [
        _binary("debootstrap"),
        "--variant=minbase",
        "--include=python3,python3-venv",
        SUITE,
        str(rootfs),
        debian_mirror(),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise ContainerHarnessError(
                f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
            )
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        try:
            docker.run("import", "-", tag, stdin=tar.stdout, timeout=timeout)
        finally:
            tar.stdout.close()
            tar.wait(timeout=60)
    finally:
        _unmount_below(rootfs)
        shutil.rmtree(rootfs, ignore_errors=True)


# --------------------------------------------------------------------------
# the host's pip sources, served to the build


def host_pip_sources(
    python: str = sys.executable, env: dict[str, str] | None = None
) -> tuple[list[str], list[str], bool]:
    """``(find_links, extra_index_urls, custom_cert)`` from ``pip config list`` (files and PIP_* env)."""
    proc = subprocess.run(
        [python, "-m", "pip", "config", "list"], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    links: list[str] = []
    indexes: list[str] = []
    cert = False
    for line in proc.stdout.splitlines():
        name, sep, value = line.strip().partition("=")
        if not sep:
            continue
        key, value = name.rsplit(".", 1)[-1], value.strip("'\"")
        target = {"find-links": links, "extra-index-url": indexes}.get(key)
        if target is not None:
            target.extend(v for v in value.split() if v not in target)
        cert = cert or key == "cert"
    return links, indexes, cert


def _local_path(source: str) -> Path | None:
    if source.startswith("file://"):
        return Path(unquote(urlparse(source).path))
    if "://" not in source:
        return Path(source)
    return None


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def pip_sources(workdir: Path, python: str = sys.executable) -> Iterator[list[str]]:
    """pip options for ``docker build --network host`` that reach the host's pip sources.

    Local folders and ``file://`` indexes are served over HTTP on 127.0.0.1.
    An index is served from its parent folder so that the ``../../files/``
    links of a generated simple index still resolve. Where the host's pip
    trusts a custom CA bundle (a TLS-intercepting proxy), the image does not
    have that CA: PyPI's hosts are then marked trusted, which is safe here
    because the lock file pins every file's sha256 and pip checks each one.
    Yields ``[]`` when the host has no pip configuration.
    """
    links, indexes, cert = host_pip_sources(python)
    serve = workdir / "pip-sources"
    serve.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(serve)))
    base = f"http://127.0.0.1:{server.server_address[1]}"
    args: list[str] = []
    sources = [("--find-links", s) for s in links] + [("--extra-index-url", s) for s in indexes]
    for n, (option, source) in enumerate(sources):
        path = _local_path(source)
        if path is None:
            args += [option, source]
        elif path.is_dir():
            if option == "--find-links":
                (serve / str(n)).symlink_to(path)
                args += [option, f"{base}/{n}/"]
            else:
                (serve / str(n)).symlink_to(path.parent)
                args += [option, f"{base}/{n}/{path.name}/"]
    if cert:
        args += ["--trusted-host", "pypi.org", "--trusted-host", "files.pythonhosted.org"]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield args
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --------------------------------------------------------------------------
# Apptainer


APPTAINER_SUITE = "unstable"  # the only Debian suite with apptainer (1.4.x); it needs glibc >= 2.38


def _run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if proc.returncode != 0:
        raise ContainerHarnessError(
            f"{' '.join(cmd)[:500]} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    return proc


def install_apptainer(dest: Path, timeout: float = 600.0) -> Path:
    """Apptainer from Debian unstable, unpacked under ``dest`` and made to run on Debian 12.

    Debian 12 has no apptainer and unstable's needs glibc >= 2.38 (Debian 12
    has 2.36). So: ``apt-get download`` of ``apptainer`` and ``libc6`` with a
    private apt configuration (own sources list, lists and cache under
    ``dest``; the system's apt is not touched), ``dpkg-deb -x`` of both, and
    ``patchelf`` points the two binaries at the unpacked glibc. Root runs
    containers without capabilities (``root default capabilities = no``):
    sandboxes that withhold CAP_SYS_RESOURCE reject apptainer's default full
    set. Returns the folder that holds ``apptainer``.
    """
    apt = dest / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    (apt / "sources.list").write_text(f"deb {debian_mirror()} {APPTAINER_SUITE} main\n")
    opts = [
        "-o",
        f"Dir::Etc::SourceList={apt / 'sources.list'}",
        "-o",
        "Dir::Etc::SourceParts=/nonexistent",
        "-o",
        f"Dir::State::Lists={apt / 'lists'}",
        "-o",
        f"Dir::Cache={apt / 'cache'}",
        "-o",
        "APT::Sandbox::User=root",
    ]
    _run(["apt-get", *opts, "update"], timeout)
    _run(["apt-get", *opts, "download", "apptainer", "libc6"], timeout, cwd=apt / "debs")
    root = dest / "root"
    for deb in sorted((apt / "debs").glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(root)], timeout)
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    for binary in (root / "usr" / "bin" / "apptainer", libdir / "apptainer" / "bin" / "starter"):
        _run(
            [
                _binary("patchelf"),
                "--set-interpreter",
                str(libdir / "ld-linux-x86-64.so.2"),
                "--force-rpath",
                "--set-rpath",
                f"{libdir}:/lib/x86_64-linux-gnu",
                str(binary),
            ],
            timeout,
        )
    # Relocated: apptainer looks for its configuration in <prefix>/etc and its
    # session mount point in <libexec>/../var.
    (root / "usr" / "etc").symlink_to("../etc")
    (root / "usr" / "lib" / "var" / "lib" / "apptainer" / "mnt" / "session").mkdir(parents=True)
    conf = root / "etc" / "apptainer" / "apptainer.conf"
    text = conf.read_text()
    if "\nroot default capabilities = full\n" not in text:
        raise ContainerHarnessError(f"{conf} has no 'root default capabilities = full' line to change")
    conf.write_text(text.replace("\nroot default capabilities = full\n", "\nroot default capabilities = no\n"))
    bindir = root / "usr" / "bin"
    _run([str(bindir / "apptainer"), "--version"], 60)
    return bindir
