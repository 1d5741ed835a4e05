"""The workflow on a real (one-node, localhost) SLURM cluster with --profile profiles/slurm.

Opt-in: set LMSHIP_SLURM_TEST=1 (CI does). Needs root on Debian: the test
installs Debian's SLURM packages if missing, starts munged, slurmctld and
slurmd, and stops them again (tests/support/slurm_cluster.py). Each rule must run as
its own SLURM job with the threads, memory and time limit the rule declared,
checked from SLURM's own records.
"""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
from support.slurm_cluster import ClusterInfo, job_records, local_slurm, run_bounded
from workflow_helpers import REPO, SNAKEFILE, snakemake, tiny_config, write_config

SEQ = 16
RUN_TIMEOUT = 1500.0
# the rules marked `localrule: True` in the workflow (read from it, so a new local rule needs no edit here)
_RULE_FILES = [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]
LOCAL_RULES = {
    name
    for text in (p.read_text() for p in _RULE_FILES)
    for name, body in re.findall(r"^rule (\w+):\n((?:[ \t]+.*\n|\n)*)", text + "\n", re.M)
    if re.search(r"^\s+localrule: True", body, re.M)
}

needs_cluster = pytest.mark.skipif(
    os.environ.get("LMSHIP_SLURM_TEST") != "1" or os.geteuid() != 0,
    reason="set LMSHIP_SLURM_TEST=1 (and run as root on Debian) to start a local SLURM cluster",
)


def slurm_config() -> dict:
    return tiny_config(
        backends=["pytorch", "onnx", "tflite_fp32"],
        benchmark={"threads": [1, 2], "repeats": 3, "warmup": 1, "min_seconds": 0},
        # generation runs the same envs and rules as the forward chain (tests/test_workflow.py
        # runs it); left out here to keep CI's time
        generation={**tiny_config()["generation"], "enabled": False},
    )


def declared_jobs(workdir: Path) -> Counter:
    """(rule, threads, mem_mb, runtime) of every job Snakemake plans, from its own dry run."""
    out = snakemake(workdir, "-n", "--profile", str(REPO / "profiles" / "slurm")).stdout
    jobs: Counter = Counter()
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", out):
        m = re.search(r"^(local)?rule (\w+):", block, re.M)
        if not m or m.group(1) or m.group(2) in LOCAL_RULES:
            continue  # local rules never reach SLURM
        threads = re.search(r"^\s+threads: (\d+)", block, re.M)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        assert res and re.search(r"\bmem_mb=\d+", res.group(1)), f"no mem_mb in the plan of:\n{block}"
        mem = int(re.search(r"\bmem_mb=(\d+)", res.group(1)).group(1))
        runtime = int(re.search(r"\bruntime=(\d+)", res.group(1)).group(1))
        jobs[(m.group(2), int(threads.group(1)) if threads else 1, mem, runtime)] += 1
    return jobs


@needs_cluster
def test_every_rule_is_its_own_slurm_job_with_its_resources(tmp_path):
    workdir = tmp_path / "wf"
    write_config(workdir, slurm_config())
    declared = declared_jobs(workdir)
    assert declared, "the dry run planned no SLURM job"
    with local_slurm(tmp_path / "cluster", cpus=2, mem_mb=20000) as info:
        cmd = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(SNAKEFILE),
            "--directory",
            str(workdir),
            "--profile",
            str(REPO / "profiles" / "slurm"),
            "--default-resources",
            f"slurm_partition={info.partition}",
            "--slurm-no-account",
            "--slurm-init-seconds-before-status-checks",
            "2",
        ]
        proc = run_bounded(cmd, timeout=RUN_TIMEOUT, log=tmp_path / "snakemake.log")
        assert proc.returncode == 0, proc.stdout[-5000:]
        records = job_records(info)
    _check_records(records, declared, info)
    assert (workdir / "results" / "plot.png").is_file()
    assert (workdir / "results" / "tiny" / f"seq{SEQ}" / "tflite_fp32" / "model.tflite").is_file()


def _check_records(records: list[dict], declared: Counter, info: ClusterInfo) -> None:
    ran: Counter = Counter()
    for rec in records:
        assert rec["state"] == "COMPLETED" and rec["exit_code"] == "0:0", rec
        assert rec["partition"] == info.partition
        ran[(rec["rule"], rec["cpus"], rec["mem_mb"], rec["time_limit_min"])] += 1
    assert ran == declared, f"SLURM ran {dict(ran)}\nthe rules declared {dict(declared)}"
    rules = {rule for rule, *_ in ran}
    assert {"savedmodel", "tflite", "timing", "evaluate", "export_onnx"} <= rules
    assert not rules & LOCAL_RULES


JOBCOMP_LINE = (
    "JobId=7 UserId=root(0) GroupId=root(0) Name=f8d45bfe-b426 JobState=COMPLETED "
    "Partition=debug TimeLimit=3 StartTime=2026-11-24T06:02:50 "
    "EndTime=2026-11-24T06:02:51 NodeList=localhost NodeCnt=1 ProcCnt=2 "
    "WorkDir=/w ReservationName= Tres=cpu=2,mem=1500M,node=1,billing=2 Account=ci "
    "QOS= WcKey= Cluster=unknown SubmitTime=2026-11-24T06:02:47 "
    "EligibleTime=2026-11-24T06:02:47 DerivedExitCode=0:0 ExitCode=0:0 "
)
SCONTROL_LINE = (
    "Phase=prolog_slurmctld JobId=7 JobName=f8d45bfe-b426 UserId=root(0) "
    "JobState=CONFIGURING ExitCode=0:0 TimeLimit=00:03:00 Partition=debug "
    "NodeList=localhost NumCPUs=2 CPUs/Task=2 TRES=cpu=2,mem=1500M,node=1,billing=2 "
    "MinMemoryNode=1500M Command=(null) WorkDir=/w Comment=rule_b_wildcards_x "
    " StdErr=/w/x.log"
)


def test_job_records_parse_slurm_lines(tmp_path):
    """The record parser on lines in the format SLURM 22.05 writes (jobcomp/filetxt, scontrol -o)."""
    info = ClusterInfo(
        workdir=tmp_path,
        partition="debug",
        node="localhost",
        cpus=2,
        mem_mb=1000,
        conf_file=tmp_path / "slurm.conf",
        jobcomp_file=tmp_path / "jobcomp.txt",
        jobinfo_file=tmp_path / "jobinfo.txt",
        log_dir=tmp_path,
    )
    info.jobcomp_file.write_text(JOBCOMP_LINE + "\n")
    info.jobinfo_file.write_text(SCONTROL_LINE + "\n")
    [rec] = job_records(info)
    assert (rec["job_id"], rec["rule"], rec["comment"]) == (7, "b", "rule_b_wildcards_x")
    assert (rec["state"], rec["exit_code"]) == ("COMPLETED", "0:0")
    assert (rec["cpus"], rec["mem_mb"], rec["time_limit_min"]) == (2, 1500, 3)
