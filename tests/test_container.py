"""The Dockerfile builds, and the workflow runs inside the image: with docker run and with --sdm apptainer.

Opt-in: set LMSHIP_CONTAINER_TEST=1 (CI does). Needs root on Debian 12: the
test installs docker.io, debootstrap and patchelf if missing, starts a private
dockerd, builds a Debian 12 base image without any registry (debootstrap +
docker import), builds ./Dockerfile on it with the host's pip sources, then
(1) runs the tiny workflow with `docker run --network none` as another user,
results/, logs/ and benchmarks/ mounted from the host, and (2) installs
Apptainer from Debian unstable and runs the tiny workflow with
`snakemake --sdm apptainer` and the Snakefile's own `container:` reference.
Both check the outputs on the host and that every rule log was written inside
this image (its interpreter and this build's LMSHIP_IMAGE). Everything is
stopped and deleted again (tests/support/container_engine.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.container_engine import (
    ContainerHarnessError,
    Docker,
    build_base_image,
    debian_mirror,
    ensure_installed,
    host_pip_sources,
    install_apptainer,
    local_docker,
    pip_sources,
)
from support.slurm_cluster import run_bounded
from workflow_helpers import REPO, SNAKEFILE, tiny_config, write_config

SEQ = 16
BACKENDS = ["pytorch", "onnx", "tflite_fp32", "openvino"]
# Every rule but eval_text: the test containers have no network (docker run --network none), so
# the evaluation prose (a PyPI wheel's file) is fetched on the host first (see _prose_on_host).
RULES = {
    "prepare_model",
    "eval_inputs",
    "reference_logits",
    "export_onnx",
    "simplify_onnx",
    "savedmodel",
    "tflite",
    "openvino_ir",
    "timing",
    "machine_limit",
    "evaluate",
    "accuracy_table",
    "summary",
    "plot",
    "quality_plot",
    "ship_plot",
}
VENV_PYTHON = "/opt/lmship/venv/bin/python"  # snakemake script: python3 in docker run, python under --sdm
USER = 65534  # nobody: the run must work as any user and leave files the caller owns
BASE_TIMEOUT = 600.0
BUILD_TIMEOUT = 900.0
RUN_TIMEOUT = 900.0
SANDBOX_TIMEOUT = 900.0
LIFETIME = BASE_TIMEOUT + BUILD_TIMEOUT + 2 * RUN_TIMEOUT + SANDBOX_TIMEOUT + 1200

wanted = os.environ.get("LMSHIP_CONTAINER_TEST") == "1"
needs_docker = pytest.mark.skipif(
    not wanted or os.geteuid() != 0,
    reason="set LMSHIP_CONTAINER_TEST=1 (and run as root on Debian 12) to build the image and run the workflow in it",
)


def container_config() -> dict:
    return tiny_config(
        backends=BACKENDS,
        benchmark={"threads": [1], "rounds": 2, "repeats": 3, "warmup": 1, "min_seconds": 0},
        # generation runs the same envs and rules as the forward chain (tests/test_workflow.py
        # runs it); left out here to keep CI's time
        generation={**tiny_config()["generation"], "enabled": False},
    )


def _prose_on_host(workdir: Path) -> None:
    """Run the eval_text stage on the host (it downloads a wheel from the package index)."""
    from lmship.eval_text import eval_text

    target = eval_text(workdir / "results" / "eval_text.txt")
    os.chown(target, USER, USER)


def image_marker(log: Path) -> str | None:
    """The image named in the first `python ..., image ...` line of a rule log (lmship.logs.log_to)."""
    for line in log.read_text(errors="replace").splitlines():
        if " lmship: python " in line and ", image " in line:
            return line.split(" lmship: python ", 1)[1]
    return None


@dataclass
class Built:
    docker: Docker
    tag: str
    seconds: dict[str, float]
    size: int  # bytes, docker's figure for the built image


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A private dockerd with the image built from ./Dockerfile on a debootstrap base (module-wide)."""
    try:
        ensure_installed()
    except ContainerHarnessError as exc:
        pytest.fail(f"cannot install the container tools: {exc}")  # CI asked for this test: fail, don't skip
    tmp = tmp_path_factory.mktemp("image")
    tag = f"lmship:ci-{uuid.uuid4().hex[:8]}"
    base = tag.replace("lmship:", "lmship-base:")
    seconds: dict[str, float] = {}
    with local_docker(lifetime=LIFETIME) as docker:
        started = time.monotonic()
        build_base_image(docker, base, tmp, timeout=BASE_TIMEOUT)
        seconds["base image"] = time.monotonic() - started
        started = time.monotonic()
        with pip_sources(tmp) as pip_args:
            build = ["build", "--network", "host", "-t", tag, "--build-arg", f"BASE={base}"]
            build += ["--build-arg", f"LMSHIP_IMAGE={tag}"]
            if pip_args:
                build += ["--build-arg", "PIP_ARGS=" + " ".join(pip_args)]
            docker.run(*build, str(REPO), timeout=BUILD_TIMEOUT)
        seconds["image build"] = time.monotonic() - started
        inspect = json.loads(docker.run("image", "inspect", tag, timeout=60).stdout)[0]
        assert f"LMSHIP_IMAGE={tag}" in inspect["Config"]["Env"]
        print(f"\nimage {tag}: {inspect['Size'] / 1e6:.0f} MB")
        yield Built(docker, tag, seconds, int(inspect["Size"]))
    print("\n" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))


@needs_docker
def test_workflow_runs_in_docker(built, tmp_path):
    workdir = tmp_path / "wf"
    write_config(workdir, container_config())
    mounts = []
    for sub in ("results", "logs", "benchmarks"):
        (workdir / sub).mkdir()
        os.chown(workdir / sub, USER, USER)
        mounts += ["-v", f"{workdir / sub}:/work/{sub}"]
    mounts += ["-v", f"{workdir / 'config.yaml'}:/work/config.yaml:ro"]
    _prose_on_host(workdir)
    docker, tag = built.docker, built.tag
    started = time.monotonic()
    run = [docker.cli, "run", "--rm", "--network", "none", "--user", f"{USER}:{USER}", *mounts, tag]
    proc = run_bounded(run, timeout=RUN_TIMEOUT, env=docker.env, log=tmp_path / "docker-run.log")
    built.seconds["docker run"] = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-6000:]
    # Snakemake inside the image (a new container) finds nothing to redo.
    again = run_bounded(
        [docker.cli, "run", "--rm", "--network", "none", "--user", f"{USER}:{USER}", *mounts, tag, "-n"],
        timeout=300,
        env=docker.env,
    )
    assert again.returncode == 0 and "Nothing to be done" in again.stdout, again.stdout[-4000:]
    _check_outputs(workdir, f"{VENV_PYTHON}3, image {tag}")
    for path in (workdir / "results" / "plot.png", workdir / "results" / "summary.csv"):
        assert path.stat().st_uid == USER, f"{path} is owned by uid {path.stat().st_uid}, not the --user {USER}"


def snakefile_container() -> str:
    m = re.search(r'^container: "([^"]+)"$', SNAKEFILE.read_text(), re.M)
    assert m, "no container: line in the Snakefile"
    return m.group(1)


@needs_docker
def test_snakemake_sdm_apptainer_runs_every_rule_in_the_image(built, tmp_path):
    """snakemake --sdm apptainer with the Snakefile's container: every rule log comes from the image.

    Converting the 4 GB image to a .sif (what Snakemake's own pull does, into
    .snakemake/singularity/<md5 of the URL>.simg) takes ~8 min on 2 cores,
    mostly mksquashfs; the test builds an Apptainer sandbox folder from the
    same docker-daemon reference instead and puts it where Snakemake looks,
    so Snakemake finds the image and does not pull.
    """
    bindir = install_apptainer(tmp_path / "apptainer", timeout=600)
    url = snakefile_container()
    assert url.startswith("docker-daemon:") and "//" not in url, url
    built.docker.run("tag", built.tag, url.removeprefix("docker-daemon:"), timeout=60)
    workdir = tmp_path / "wf"
    write_config(workdir, container_config())
    _prose_on_host(workdir)
    image = workdir / ".snakemake" / "singularity" / (hashlib.md5(url.encode()).hexdigest() + ".simg")
    image.parent.mkdir(parents=True)
    env = dict(built.docker.env, PATH=f"{bindir}:{os.environ['PATH']}", APPTAINER_TMPDIR=str(tmp_path))
    env.pop("APPTAINER_CACHEDIR", None)  # Snakemake would keep its images there instead of .snakemake/
    build_env = dict(env, APPTAINER_CACHEDIR=str(tmp_path / "apptainer-cache"))
    _room_for_sandbox(built, tmp_path)
    try:
        started = time.monotonic()
        proc = run_bounded(
            [str(bindir / "apptainer"), "build", "--sandbox", str(image), url],
            timeout=SANDBOX_TIMEOUT,
            env=build_env,
            log=tmp_path / "apptainer-build.log",
        )
        built.seconds["apptainer sandbox"] = time.monotonic() - started
        assert proc.returncode == 0, proc.stdout[-4000:]
        started = time.monotonic()
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir)]
        cmd += ["--cores", "2", "--sdm", "apptainer"]
        proc = run_bounded(cmd, timeout=RUN_TIMEOUT, env=env, log=tmp_path / "snakemake.log")
        built.seconds["snakemake --sdm apptainer"] = time.monotonic() - started
        assert proc.returncode == 0, proc.stdout[-6000:]
        assert "Pulling singularity image" not in proc.stdout
        assert proc.stdout.count(f"Activating singularity image {image}") >= len(RULES)
        _check_outputs(workdir, f"{VENV_PYTHON}, image {built.tag}")
    finally:  # 4 GB each; pytest keeps the last three tmp folders
        shutil.rmtree(image, ignore_errors=True)
        shutil.rmtree(tmp_path / "apptainer-cache", ignore_errors=True)


def _room_for_sandbox(built: Built, where: Path) -> None:
    """Free docker's build cache, then skip (with the figures) if the sandbox cannot fit.

    apptainer build --sandbox saves the image to a tar under APPTAINER_TMPDIR
    and unpacks its layers next to it before moving the rootfs into place:
    about twice the image on disk at its peak (measured: 15.2 GB more in use
    at the peak of this module for a 4.2 GB image, docker's copy included).
    A CI machine's disk ran out here once, mid-unpack; a skip that says how
    much was free is the honest outcome on such a machine, not a failure of
    the workflow.
    """
    built.docker.run("builder", "prune", "-af", timeout=300, check=False)
    need = 2 * built.size + 2 * 10**9
    free = shutil.disk_usage(where).free
    if free < need:
        pytest.skip(
            f"an Apptainer sandbox of the {built.size / 1e9:.1f} GB image needs about {need / 1e9:.1f} GB free "
            f"in {where}, which has {free / 1e9:.1f} GB: give the machine more disk to run this test"
        )


def _check_outputs(workdir: Path, marker: str) -> None:
    results = workdir / "results"
    tflite = results / "tiny" / f"seq{SEQ}" / "tflite_fp32" / "model.tflite"
    for path in (results / "plot.png", results / "summary.md", tflite):
        assert path.is_file() and path.stat().st_size > 0, f"{path} missing or empty on the host"
    with open(results / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["backend"] for r in rows) == sorted(BACKENDS), rows
    assert all(float(r["median_ms"]) > 0 for r in rows), rows

    logs = sorted((workdir / "logs").rglob("*.log"))
    ran = {log.relative_to(workdir / "logs").parts[0].removesuffix(".log") for log in logs}
    assert ran == RULES, f"rule logs on the host: {sorted(ran)}"
    outside = {str(log): image_marker(log) for log in logs if image_marker(log) != marker}
    assert not outside, f"rule logs without '{marker}': {outside}"


def test_image_marker_reads_the_log_line(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("2026-11-25 05:00:00,000 INFO lmship: python /usr/bin/python3, image none\nrest\n")
    assert image_marker(log) == "/usr/bin/python3, image none"
    log.write_text("no marker\n")
    assert image_marker(log) is None


def test_debian_mirror_from_both_source_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://old bookworm main\ndeb [arch=amd64] http://one/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://one/debian"
    (tmp_path / "sources.list").write_text("")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://sec/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nURIs: http://two/debian\nSuites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert debian_mirror(tmp_path) == "http://two/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    with pytest.raises(ContainerHarnessError, match="no apt source for 'bookworm main'"):
        debian_mirror(tmp_path)


def test_host_pip_sources_parse_pip_config(tmp_path):
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nfind-links = /w\nextra-index-url = file:///i/simple https://x/simple\ncert = /c.crt\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = str(conf)
    links, indexes, cert = host_pip_sources(env=env)
    assert "/w" in links and {"file:///i/simple", "https://x/simple"} <= set(indexes) and cert
