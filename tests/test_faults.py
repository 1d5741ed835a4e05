"""Interruptions and failures never lose or corrupt work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from workflow_helpers import SNAKEFILE, planned_jobs, snakemake, tiny_config, write_config

SEQ = 16
UPSTREAM = ("prepare_model", "eval_inputs", "reference_logits", "export_onnx", "simplify_onnx")


def _tflite_targets(model: str = "tiny") -> list[str]:
    return [f"results/{model}/seq{SEQ}/tflite_{p}" for p in ("fp32", "fp16")]


def test_sigkill_during_onnx2tf_reruns_that_stage_and_nothing_before(tmp_path):
    write_config(tmp_path, tiny_config())
    log = tmp_path / "logs" / "savedmodel" / f"tiny_seq{SEQ}.log"
    saved = tmp_path / "results" / "tiny" / f"seq{SEQ}" / "savedmodel"
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(tmp_path)]
    proc = subprocess.Popen(
        [*cmd, "--cores", "2", *_tflite_targets()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: kill Snakemake and its job together
    )
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if log.exists() and "onnx2tf: converting" in log.read_text(errors="replace"):
                break
            assert proc.poll() is None, "the run ended before the onnx2tf stage started"
            time.sleep(0.05)
        else:
            raise AssertionError("the onnx2tf stage never started")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not saved.exists(), "the SavedModel was complete before the kill: the test did not interrupt it"
    assert not any((tmp_path / "results" / "tiny" / f"seq{SEQ}").glob("tflite_*"))
    assert (tmp_path / "results" / "tiny" / f"seq{SEQ}" / "onnx_simplified" / "model.onnx").is_file()

    plan = planned_jobs(snakemake(tmp_path, "-n", *_tflite_targets()).stdout)
    assert plan == {"savedmodel": 1, "tflite": 2}, plan

    snakemake(tmp_path, "--cores", "2", *_tflite_targets())
    assert (saved / "saved_model.pb").is_file()
    assert all((tmp_path / t / "model.tflite").is_file() for t in _tflite_targets())
    assert not list((tmp_path / "results").rglob(".*partial*"))
    assert "Nothing to be done" in snakemake(tmp_path, "-n", *_tflite_targets()).stdout


def test_failed_stage_logs_its_cause_and_other_branches_finish(tmp_path):
    """One model's weights are truncated: its branch fails with the file named; the other model completes."""
    from lmship.prepare_model import prepare_model

    broken = prepare_model({"source": "random", "seed": 3}, tmp_path / "user" / "broken_model")
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    workdir = tmp_path / "wd"
    config = tiny_config()
    config["models"]["broken"] = {"source": "local", "path": str(broken)}
    write_config(workdir, config)
    targets = [*_tflite_targets("tiny"), *_tflite_targets("broken")]
    proc = snakemake(workdir, "--cores", "2", *targets, check=False)
    assert proc.returncode != 0
    log = (workdir / "logs" / "prepare_model" / "broken.log").read_text()
    assert "model.safetensors" in log and "truncated" in log
    assert not (workdir / "results" / "broken" / "hf").exists()
    assert all((workdir / t / "model.tflite").is_file() for t in _tflite_targets("tiny"))


def test_small_memory_budget_rules_out_what_would_not_fit_before_any_job(tmp_path):
    """A stage predicted to peak above the run's memory budget makes its formats not applicable, said
    before any job, instead of being killed after minutes; the other formats are still planned."""
    from lmship.sizes import ModelSize, stage_need

    # a budget between what the reference stages and the export need for the tiny model and what a
    # TFLite conversion needs (TensorFlow alone takes more): read from the measured stage costs
    tiny = ModelSize(100_000)
    fits = max(stage_need(s, tiny, default_mb=1, default_min=1).peak_mb for s in UPSTREAM[:4])
    too_big = max(stage_need("tflite", tiny, "seq", p, default_mb=1, default_min=1).peak_mb for p in ("fp32", "fp16"))
    assert fits < too_big, (fits, too_big)
    budget = (fits + too_big) // 2
    write_config(tmp_path, tiny_config())
    proc = snakemake(tmp_path, "-n", "--resources", f"mem_mb={budget}")
    out = proc.stdout + proc.stderr
    said = f"above this run's memory budget of {budget / 1000:.1f} GB"
    ruled_out = [line for line in out.splitlines() if said in line]
    assert ruled_out, out[-3000:]
    for line in ruled_out:
        assert "not applicable:" in line and "is predicted to peak at" in line
    plan = planned_jobs(proc.stdout)
    backends = [line.split(":")[1].split()[0] for line in ruled_out]
    for backend in backends:
        assert f"results/tiny/seq{SEQ}/{backend}\n" not in proc.stdout
    assert plan.get("export_onnx") and plan.get("evaluate")
