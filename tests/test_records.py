"""lmship.records: a stage's artifact folder, or the record of why it failed; never a half-written artifact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lmship import StageError
from lmship.records import (
    FAILED,
    artifact_in,
    attempt,
    failure,
    failure_lines,
    failures,
    forget,
    run_stage,
)

REPO = Path(__file__).resolve().parents[1]


def _writes_model(out: Path) -> None:
    (out / "model.onnx").write_bytes(b"onnx")
    (out / "metrics.json").write_text(json.dumps({"artifact": str(out / "model.onnx")}))


def test_a_stage_that_succeeds_leaves_its_artifact_with_paths_of_its_final_place(tmp_path):
    out = tmp_path / "seq16" / "onnx"
    assert run_stage("export_onnx", out, _writes_model) is None
    assert artifact_in(out) == out / "model.onnx" and failure(out) is None
    assert json.loads((out / "metrics.json").read_text())["artifact"] == str(out / "model.onnx")
    assert not list(out.parent.glob(".*partial*"))


def test_a_stage_that_succeeds_logs_its_peak_beside_what_it_declared(tmp_path, caplog):
    """A run's log says of every stage the memory it took and the mem_mb it asked for (a 1B run is
    checked against its declared figures by these lines)."""

    def grows(folder: Path) -> None:
        ballast = bytearray(200 * 1024 * 1024)
        ballast[::4096] = b"x" * len(ballast[::4096])
        _writes_model(folder)

    with caplog.at_level("INFO", logger="lmship.records"):
        assert run_stage("export_onnx", tmp_path / "onnx", grows, mem_mb=5000) is None
    said = [r.getMessage() for r in caplog.records if "peak RSS" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("export_onnx: peak RSS ") and "(declared mem_mb 5000" in said[0]
    assert float(said[0].split("peak RSS ")[1].split(" MB")[0]) >= 200


def test_a_stage_error_becomes_the_record_and_nothing_of_the_artifact_is_kept(tmp_path):
    out = tmp_path / "tflite_fp16"

    def fails(folder: Path) -> None:
        (folder / "model.tflite").write_bytes(b"half")
        raise StageError("tflite_fp16: agrees on 13.50% of positions\nsecond line of detail")

    record = run_stage("tflite", out, fails, log_path="logs/tflite/x.log")
    assert record == failure(out)
    assert record["failed_at"] == "tflite" and record["reason"] == "tflite_fp16: agrees on 13.50% of positions"
    assert record["log"] == "logs/tflite/x.log"
    assert sorted(p.name for p in out.iterdir()) == [FAILED]  # the half-written file is gone
    assert artifact_in(out) == out  # nothing for a runtime to open


def test_any_exception_names_its_type(tmp_path):
    def crashes(folder: Path) -> None:
        raise AttributeError("'Phi3Attention' object has no attribute 'q_proj'")

    record = run_stage("export_onnx", tmp_path / "onnx", crashes)
    assert record["reason"] == "AttributeError: 'Phi3Attention' object has no attribute 'q_proj'"


def test_a_child_killed_by_sigkill_is_recorded_as_out_of_memory_with_its_peak(tmp_path):
    def grows_then_is_killed(folder: Path) -> None:
        ballast = bytearray(300 * 1024 * 1024)  # touched: ~300 MB resident
        ballast[::4096] = b"x" * len(ballast[::4096])
        os.kill(os.getpid(), signal.SIGKILL)

    record = run_stage("tflite", tmp_path / "tflite_fp32", grows_then_is_killed, mem_mb=10000)
    assert record["killed_for_memory"] is True and record["mem_mb"] == 10000
    assert record["peak_rss_mb"] >= 300
    assert "out of memory" in record["reason"] and "declared mem_mb 10000" in record["reason"]


def test_a_crash_in_native_code_is_a_failure_of_the_format_not_of_the_run(tmp_path):
    record = run_stage("openvino_ir", tmp_path / "openvino", lambda out: os.kill(os.getpid(), signal.SIGSEGV))
    assert record["failed_at"] == "openvino_ir" and "crashed with SIGSEGV" in record["reason"]
    assert failure(tmp_path / "openvino") == record


def test_a_failed_input_is_passed_on_without_running_the_stage(tmp_path):
    run_stage("savedmodel", tmp_path / "savedmodel", lambda out: (_ for _ in ()).throw(StageError("onnx2tf broke")))
    ran = []
    record = run_stage("tflite", tmp_path / "tflite_fp16", ran.append, inputs=[tmp_path / "savedmodel"])
    assert ran == []
    assert record["failed_at"] == "savedmodel" and record["reason"] == "onnx2tf broke"
    assert failure(tmp_path / "tflite_fp16") == record


def test_an_interrupted_stage_records_nothing(tmp_path):
    """SIGTERM (Snakemake cancelling a job) is not a failure of the format: the stage must simply run again."""
    script = (
        "import os, signal, sys; from pathlib import Path; sys.path.insert(0, sys.argv[2]);"
        "from lmship.records import run_stage;"
        "run_stage('savedmodel', Path(sys.argv[1]), lambda out: os.kill(os.getpid(), signal.SIGTERM))"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "savedmodel"), str(REPO / "workflow")])
    assert proc.returncode == -signal.SIGTERM
    assert not (tmp_path / "savedmodel").exists()


def test_a_cancelled_job_takes_its_stage_with_it(tmp_path):
    """SIGTERM to the job's process (Snakemake cancelling it) ends the stage's child too: no orphan works on."""
    import time

    pid_file = tmp_path / "child.pid"
    script = (
        "import os, sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[2]);"
        "from lmship.records import run_stage;"
        "run_stage('savedmodel', Path(sys.argv[1]),"
        " lambda out: (Path(sys.argv[3]).write_text(str(os.getpid())), time.sleep(60)))"
    )
    args = [sys.executable, "-c", script, str(tmp_path / "savedmodel"), str(REPO / "workflow"), str(pid_file)]
    job = subprocess.Popen(args)
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    job.send_signal(signal.SIGTERM)
    assert job.wait(timeout=30) == -signal.SIGTERM
    time.sleep(0.5)
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)
    assert not (tmp_path / "savedmodel").exists()


def test_attempt_reports_the_failure_without_writing_anything(tmp_path):
    assert attempt(lambda _: None, stage="evaluate") is None
    record = attempt(lambda _: (_ for _ in ()).throw(ValueError("bad logits")), stage="evaluate", log_path="e.log")
    assert (
        record["failed_at"] == "evaluate" and record["reason"] == "ValueError: bad logits" and record["log"] == "e.log"
    )


def test_the_run_names_every_failure_once_and_forgets_the_records(tmp_path):
    results = tmp_path / "results"
    run_stage("savedmodel", results / "m" / "seq16" / "savedmodel", lambda out: 1 / 0, log_path="logs/sm.log")
    run_stage("tflite", results / "m" / "seq16" / "tflite_fp32", print, inputs=[results / "m" / "seq16" / "savedmodel"])
    accuracy = results / "m" / "seq16" / "accuracy" / "tflite_fp32.json"
    accuracy.parent.mkdir(parents=True)
    record = {"failed_at": "savedmodel", "reason": "ZeroDivisionError: division by zero", "log": "logs/sm.log"}
    accuracy.write_text(json.dumps({"backend": "tflite_fp32", "status": "failed", **record}))
    timing = results / "m" / "seq16" / "timing" / "t1.csv"
    timing.parent.mkdir()
    timing.write_text("backend,status,failed_at,reason,log\nonnx,ok,,,\nopenvino,failed,timing,boom,logs/t.log\n")
    ok = results / "m" / "seq16" / "onnx"
    run_stage("export_onnx", ok, _writes_model)

    found = failures(results, ["m"])
    assert {f["failed_at"] for f in found} == {"savedmodel", "timing"}
    lines = failure_lines(found)
    assert lines[0].startswith("2 stage(s) failed")
    assert any("failed at savedmodel: ZeroDivisionError" in line for line in lines)
    assert any("log: logs/sm.log" in line for line in lines) and any("log: logs/t.log" in line for line in lines)
    forget(found)
    assert not (results / "m" / "seq16" / "savedmodel").exists() and not accuracy.exists() and not timing.exists()
    assert (ok / "model.onnx").is_file()  # a format that succeeded keeps its artifact
    assert failures(results, ["m"]) == [] and failure_lines([]) == []


@pytest.mark.parametrize("name", ["model.onnx", "model.tflite", "model.xml", "model.gguf"])
def test_artifact_in_finds_the_file_a_runtime_opens(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "metrics.json").write_text("{}")
    assert artifact_in(tmp_path) == tmp_path / name


def test_artifact_of_gives_a_folder_runtime_its_folder(tmp_path):
    """Bug: ONNX Runtime GenAI handed the builder's model.onnx instead of its folder (genai_config.json beside it)."""
    from lmship.runtimes import artifact_of

    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "genai_config.json").write_text("{}")
    assert artifact_of("onnxruntime", tmp_path) == tmp_path / "model.onnx"
    assert artifact_of("ort_genai", tmp_path) == tmp_path
    assert artifact_of("openvino_genai", tmp_path) == tmp_path


def test_a_stage_finding_its_format_not_applicable_is_not_retried(tmp_path):
    """A reason that starts ``not applicable`` is the stage's finding about the model: no failure line, kept."""
    results = tmp_path / "results"
    why = "not applicable: no MatMul weight of m sits on a GGUF Q4_1 grid"

    def refuses(out: Path) -> None:
        raise StageError(why)

    folder = results / "m" / "seq16" / "onnx_q4_exact"
    record = run_stage("quantize_onnx", folder, refuses, log_path="logs/q.log")
    assert record["reason"] == why and (folder / "failed.json").is_file()
    accuracy = results / "m" / "seq16" / "accuracy" / "onnx_q4_exact.json"
    accuracy.parent.mkdir(parents=True)
    accuracy.write_text(json.dumps({"backend": "onnx_q4_exact", "status": "failed", **record}))
    run_stage("savedmodel", results / "m" / "seq16" / "savedmodel", lambda out: 1 / 0, log_path="logs/sm.log")
    found = failures(results, ["m"])
    assert [f["failed_at"] for f in found] == ["savedmodel"]
    forget(found)
    assert (folder / "failed.json").is_file() and accuracy.is_file()
