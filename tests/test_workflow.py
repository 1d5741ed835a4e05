"""The real DAG on tiny models (random weights, and a local HF folder), end to end.

One full run in a temporary folder; the tests then read its results and ask
Snakemake what it would rerun.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from workflow_helpers import TINY_ARCH, planned_jobs, snakemake, tiny_config, write_config

from lmship.backends import BACKENDS

SEQ = 16
BACKEND_NAMES = list(BACKENDS)


@pytest.fixture(scope="module")
def local_folder(tmp_path_factory) -> Path:
    """A model folder in HF layout, as a user would have on disk."""
    from lmship.sources import prepare_model

    folder = prepare_model(
        {"source": "random", "seed": 7, "architecture": {**TINY_ARCH, "num_hidden_layers": 1}},
        tmp_path_factory.mktemp("user") / "smollm_local_model",
    )
    (folder / "prepare.json").unlink()
    return folder


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, local_folder) -> Path:
    workdir = tmp_path_factory.mktemp("wf")
    config = tiny_config()
    config["models"]["mine"] = {"source": "local", "path": str(local_folder)}
    write_config(workdir, config)
    proc = snakemake(workdir, "--cores", "2")
    (workdir / "run.log").write_text(proc.stdout + proc.stderr)
    return workdir


def test_every_artifact_is_built(full_run):
    for model in ("tiny", "mine"):
        base = full_run / "results" / model
        assert (base / "hf" / "config.json").is_file()
        assert (base / "pytorch_int8" / "model_int8.pt").is_file()
        seq = base / f"seq{SEQ}"
        for name in (
            "eval_inputs.npz",
            "reference_logits.npy",
            "onnx.onnx",
            "onnx_simplified.onnx",
            "savedmodel/saved_model.pb",
            "tflite_fp32.tflite",
            "tflite_fp16.tflite",
            "tflite_int8.tflite",
            "onnx_int8_dynamic.onnx",
            "onnx_int8_block.onnx",
            "onnx_q4_exact.onnx",
            "accuracy.csv",
        ):
            assert (seq / name).exists(), name
        for precision in ("fp32", "fp16", "int8"):
            census = json.loads((seq / f"tflite_{precision}.ops.json").read_text())
            assert census["counts"]["flex"] == 0 and census["counts"]["custom"] == 0
    assert (full_run / "results" / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every rule left a log, heavy rules a benchmark record
    assert (full_run / "logs" / "savedmodel" / f"tiny_seq{SEQ}.log").stat().st_size > 0
    bench = pd.read_csv(full_run / "benchmarks" / "savedmodel" / f"tiny_seq{SEQ}.tsv", sep="\t")
    assert bench["max_rss"].iloc[0] > 0


def test_no_partial_outputs_left(full_run):
    assert not list((full_run / "results").rglob(".*partial*"))


def test_summary_matches_the_raw_timing_csvs(full_run):
    summary = pd.read_csv(full_run / "results" / "summary.csv")
    assert set(summary["backend"]) == set(BACKEND_NAMES)
    assert len(summary) == 2 * len(BACKEND_NAMES) * 2  # models x backends x threads
    for _, row in summary.iterrows():
        raw = pd.read_csv(
            full_run / "results" / row["model"] / f"seq{SEQ}" / "timing" / f"{row['backend']}_t{row['threads']}.csv"
        )
        lat = raw["latency_ms"].to_numpy()
        assert len(lat) >= 3 and row["runs"] == len(lat)
        assert row["median_ms"] == pytest.approx(np.median(lat), rel=1e-4)
        assert row["p90_ms"] == pytest.approx(np.percentile(lat, 90), rel=1e-4)
        assert set(raw["threads"]) == {row["threads"]}
        assert set(raw["seq_len"]) == {SEQ}
        ref = summary[
            (summary.model == row["model"]) & (summary.backend == "pytorch") & (summary.threads == row["threads"])
        ]
        assert row["speedup_vs_pytorch"] == pytest.approx(ref["median_ms"].iloc[0] / row["median_ms"], rel=1e-4)


def test_summary_accuracy_matches_the_accuracy_table(full_run):
    summary = pd.read_csv(full_run / "results" / "summary.csv")
    for model in ("tiny", "mine"):
        with open(full_run / "results" / model / f"seq{SEQ}" / "accuracy.csv") as f:
            table = {r["backend"]: r for r in csv.DictReader(f)}
        assert set(table) == set(BACKEND_NAMES) - {"pytorch"}
        for backend, r in table.items():
            rows = summary[(summary.model == model) & (summary.backend == backend)]
            assert rows["top1_agreement_pct"].iloc[0] == pytest.approx(float(r["top1_agreement_pct"]))
            assert set(rows["accuracy"]) == {"PASS" if r["passed"] == "True" else "FAIL"}
    md = (full_run / "results" / "summary.md").read_text()
    assert "| backend | threads | median ms" in md and "ship `" in md


def test_machine_limit_recorded_per_thread_count(full_run):
    for t in (1, 2):
        m = json.loads((full_run / "results" / "machine_limit" / f"t{t}.json").read_text())
        assert m["threads"] == t and m["fp32_gflops"] > 0 and m["int8_gops"] > 0
    summary = pd.read_csv(full_run / "results" / "summary.csv")
    assert (summary["limit_share_pct"] > 0).all()


def test_nothing_to_do_after_a_full_run(full_run):
    proc = snakemake(full_run, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr, proc.stdout[-3000:]


def test_changing_a_conversion_parameter_reruns_only_downstream(full_run):
    config = yaml.safe_load((full_run / "config.yaml").read_text())
    changed = {**config, "savedmodel": {"fast_weight_matmul": False}}
    try:
        write_config(full_run, changed)
        jobs = planned_jobs(snakemake(full_run, "-n").stdout)
    finally:
        write_config(full_run, config)
    assert jobs.get("savedmodel") == 2  # both models
    assert jobs.get("tflite") == 6
    for upstream in ("prepare_model", "eval_inputs", "reference_logits", "export_onnx", "simplify_onnx"):
        assert upstream not in jobs, (upstream, jobs)
    assert "quantize_onnx" not in jobs and "quantize_pytorch" not in jobs
    # only the TFLite backends are timed and evaluated again
    assert jobs.get("timing") == 2 * 3 * 2 and jobs.get("evaluate") == 2 * 3


def test_report_contains_plot_and_tables(full_run):
    snakemake(full_run, "--report", "report.zip")
    import zipfile

    names = zipfile.ZipFile(full_run / "report.zip").namelist()
    assert any(n.endswith("plot.png") for n in names)
    assert any(n.endswith("summary.csv") for n in names)
    assert any(n.endswith("accuracy.csv") for n in names)


def test_one_target_builds_only_what_it_needs(tmp_path):
    write_config(tmp_path, tiny_config())
    proc = snakemake(tmp_path, "-n", f"results/tiny/seq{SEQ}/tflite_fp16.tflite")
    assert planned_jobs(proc.stdout) == {
        "prepare_model": 1,
        "eval_inputs": 1,
        "reference_logits": 1,
        "export_onnx": 1,
        "simplify_onnx": 1,
        "savedmodel": 1,
        "tflite": 1,
    }


def test_plot_target_needs_timing_and_accuracy_but_no_extra_tflite(tmp_path):
    write_config(tmp_path, tiny_config(backends=["pytorch", "onnx"]))
    proc = snakemake(tmp_path, "-n", "results/plot.png")
    jobs = planned_jobs(proc.stdout)
    assert "savedmodel" not in jobs and "tflite" not in jobs
    assert jobs["timing"] == 2 * 2 and jobs["evaluate"] == 1 and jobs["plot"] == 1


def test_lint_is_clean(tmp_path):
    write_config(tmp_path, tiny_config())
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
