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
from workflow_helpers import PEERS, TINY_ARCH, planned_jobs, snakemake, tiny_config, write_config

from lmship.backends import BACKENDS, not_applicable
from lmship.configcheck import RESERVED_NAMES
from lmship.host import cpu_flags

SEQ = 16
# both test models have random weights (source random / local): the exact 4-bit grid does not
# apply; the bf16 backends apply only on a CPU with bf16 instructions
#: What the tiny config asks for (every backend but the peers, which tests/test_peer_rows.py runs) ...
CONFIGURED = [b for b in BACKENDS if b not in PEERS]
#: ... and what of it applies to a random model on this CPU.
BACKEND_NAMES = [b for b in CONFIGURED if not_applicable(b, "random", cpu_flags()) is None]


@pytest.fixture(scope="module")
def local_folder(tmp_path_factory) -> Path:
    """A model folder in HF layout, as a user would have on disk."""
    from lmship.prepare_model import prepare_model

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
            "onnx/model.onnx",
            "onnx_simplified/model.onnx",
            "savedmodel/saved_model.pb",
            "tflite_fp32/model.tflite",
            "tflite_fp16/model.tflite",
            "tflite_int8/model.tflite",
            "onnx_int8_dynamic/model.onnx",
            "onnx_int8_block/model.onnx",
            "openvino/model.xml",
            "openvino/model.bin",
            "accuracy.csv",
        ):
            assert (seq / name).exists(), name
        assert not list(seq.rglob("failed.json")), "no format of the tiny models fails"
        assert not (seq / "onnx_q4_exact").exists()  # not applicable: no fp32 copy under a 4-bit name
        for precision in ("fp32", "fp16", "int8"):
            census = json.loads((seq / f"tflite_{precision}" / "ops.json").read_text())
            assert census["counts"]["flex"] == 0 and census["counts"]["custom"] == 0
    for png in ("plot.png", "quality.png", "ship.png"):
        assert (full_run / "results" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # what the workflow writes directly under results/ is reserved: no model may be named so
    assert {p.name for p in (full_run / "results").iterdir()} - {"tiny", "mine"} <= set(RESERVED_NAMES)
    # every rule left a log, heavy rules a benchmark record
    assert (full_run / "logs" / "savedmodel" / f"tiny_seq{SEQ}.log").stat().st_size > 0
    bench = pd.read_csv(full_run / "benchmarks" / "savedmodel" / f"tiny_seq{SEQ}.tsv", sep="\t")
    assert bench["max_rss"].iloc[0] > 0


def generating(backends: list[str]) -> list[str]:
    """The backends that generate text (their ``generates`` in lmship.backends.BACKENDS)."""
    from lmship.backends import BACKENDS

    return [b for b in backends if BACKENDS[b].generates]


def test_generation_graphs_and_rounds(full_run):
    """Generation graphs went through the conversion rules; every format generated in interleaved rounds."""
    gen = yaml.safe_load((full_run / "config.yaml").read_text())["generation"]
    for model in ("tiny", "mine"):
        base = full_run / "results" / model
        decode, prefill = base / f"decode{gen['max_len']}", base / f"prefill{gen['prompt_tokens']}"
        for name in (
            "onnx/model.onnx",
            "onnx_simplified/model.onnx",
            "onnx_int8_block/model.onnx",
            "tflite_fp32/model.tflite",
            "host.npz",
        ):
            assert (decode / name).is_file(), name
        assert (prefill / "onnx_int8_block" / "model.onnx").is_file()
        assert not (prefill / "tflite_fp32").exists()  # tflite_prefill false: decode steps
        census = json.loads((decode / "tflite_fp32" / "ops.json").read_text())
        assert census["counts"]["flex"] == 0 and census["counts"]["custom"] == 0
        for threads in (1, 2):
            raw = pd.read_csv(base / "generation" / f"t{threads}.csv")
            assert raw["run_id"].nunique() == 1 and sorted(raw["round"].unique()) == [0, 1]
            backends = generating(BACKEND_NAMES)
            assert set(raw["backend"]) == set(backends)
            assert (raw.groupby(["backend", "round"]).size() == gen["prompts"]).all()
            firsts = raw.groupby("round")["backend"].first().tolist()
            assert firsts[0] != firsts[1]
            assert (raw["new_tokens"] == gen["new_tokens"]).all() and (raw["threads"] == threads).all()
            assert (raw["ttft_ms"] > 0).all() and (raw["decode_ms_median"] > 0).all()
            tflite = raw[raw["runtime"] == "litert"]
            assert set(tflite["prompt_via"]) == {"decode steps"}
            lossless = raw[raw["backend"].isin(["onnx", "onnx_simplified", "tflite_fp32"])]
            assert lossless["identical"].all()
    summary = pd.read_csv(full_run / "results" / "generation.csv")
    skipped = summary[summary["status"] == "not applicable"]
    assert set(skipped["backend"]) == set(CONFIGURED) - set(BACKEND_NAMES) and skipped["decode_ms_median"].isna().all()
    summary = summary[summary["status"] != "not applicable"]
    assert set(summary["status"]) == {"ok"}
    assert len(summary) == 2 * 2 * len(generating(BACKEND_NAMES))
    assert (summary["roofline_share"] > 0).all() and (summary["bandwidth_gb_s"] > 0).all()
    ref = summary[summary["backend"] == "pytorch"]
    assert (ref["vs_pytorch"] == 1.0).all()
    assert (summary["decode_spread_pct"] >= 0).all() and summary["unstable"].isin([True, False]).all()
    md = (full_run / "results" / "generation.md").read_text()
    assert "continuation of the first prompt" in md and "| PyTorch fp32 | reference |" in md
    assert (full_run / "results" / "generation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for t in (1, 2):
        bw = json.loads((full_run / "results" / "machine_limit" / f"bandwidth_t{t}.json").read_text())
        assert bw["threads"] == t and bw["read_gb_s"] > 0


def test_no_partial_outputs_left(full_run):
    assert not list((full_run / "results").rglob(".*partial*"))


def test_summary_matches_the_raw_timing_csvs(full_run):
    summary = pd.read_csv(full_run / "results" / "summary.csv")
    # the formats that do not apply are rows too, with the reason and no figures
    skipped = summary[summary["status"] == "not applicable"]
    assert set(skipped["backend"]) == set(CONFIGURED) - set(BACKEND_NAMES)
    assert skipped["reason"].str.startswith("not applicable").all() and skipped["median_ms"].isna().all()
    summary = summary[summary["status"] != "not applicable"]
    assert set(summary["backend"]) == set(BACKEND_NAMES)
    assert len(summary) == 2 * len(BACKEND_NAMES) * 2  # models x backends x threads
    # nothing fails on the tiny models, except a thread count a runtime refuses on this CPU, with its
    # reason (OpenVINO 2026.4's bf16 at one thread on an AMX CPU: ThreadsRefusedError)
    failed = summary[summary["status"] != "ok"]
    assert set(failed["status"]) <= {"failed"}
    assert failed["reason"].str.contains("ThreadsRefusedError").all(), failed[["backend", "threads", "reason"]]
    summary = summary[summary["status"] == "ok"]
    for (model, threads), block in summary.groupby(["model", "threads"]):
        raw = pd.read_csv(full_run / "results" / model / f"seq{SEQ}" / "timing" / f"t{threads}.csv")
        raw = raw[raw["backend"].isin(block["backend"])]  # the timed rows (a refused count is one failed row)
        # one run of interleaved rounds: every backend in every round, exactly `repeats` rows each
        assert raw["run_id"].nunique() == 1 and raw["node"].nunique() == 1
        assert sorted(raw["round"].unique()) == [0, 1]
        assert (raw.groupby(["backend", "round"]).size() == 3).all()
        firsts = raw.groupby("round")["backend"].first().tolist()
        assert firsts[0] != firsts[1]  # the order rotates from round to round
        assert set(block["run_id"]) == set(raw["run_id"])
        for _, row in block.iterrows():
            lat = raw.loc[raw["backend"] == row["backend"], "latency_ms"].to_numpy()
            assert row["runs"] == len(lat) == 6 and row["rounds"] == 2
            assert row["median_ms"] == pytest.approx(np.median(lat), rel=1e-4)
            assert row["p90_ms"] == pytest.approx(np.percentile(lat, 90), rel=1e-4)
            ref = block[block.backend == "pytorch"]
            assert row["speedup_vs_pytorch"] == pytest.approx(ref["median_ms"].iloc[0] / row["median_ms"], rel=1e-4)
        assert set(raw["threads"]) == {threads} and set(raw["seq_len"]) == {SEQ}


def test_summary_quality_matches_the_accuracy_table(full_run):
    summary = pd.read_csv(full_run / "results" / "summary.csv")
    for model in ("tiny", "mine"):
        with open(full_run / "results" / model / f"seq{SEQ}" / "accuracy.csv") as f:
            table = {r["backend"]: r for r in csv.DictReader(f)}
        assert set(table) == set(BACKEND_NAMES) - {"pytorch"}
        for backend, r in table.items():
            rows = summary[(summary.model == model) & (summary.backend == backend)]
            assert set(rows["tier"]) == {r["tier"]}
            assert rows["kld_mean"].iloc[0] == pytest.approx(float(r["kld_mean"]), rel=1e-5)  # CSV keeps 6 digits
            assert rows["top1_pct"].iloc[0] == pytest.approx(float(r["top1_pct"]), rel=1e-5)
            assert float(r["top1_ci95_low"]) <= float(r["top1_pct"]) <= float(r["top1_ci95_high"])
        # fp32 conversions of the same weights are lossless
        assert table["onnx"]["tier"] == "lossless" and table["tflite_fp32"]["tier"] == "lossless"
    md = (full_run / "results" / "summary.md").read_text()
    assert "| backend | threads | median ms" in md and "fastest of each tier or better: lossless: `" in md
    assert "`onnx_q4_exact`: not applicable" in md


def test_machine_limit_recorded_per_thread_count(full_run):
    for t in (1, 2):
        m = json.loads((full_run / "results" / "machine_limit" / f"t{t}.json").read_text())
        assert m["threads"] == t and m["fp32_gflops"] > 0 and m["int8_gops"] > 0
    summary = pd.read_csv(full_run / "results" / "summary.csv")
    assert (summary.loc[summary["status"] == "ok", "limit_share_pct"] > 0).all()


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
    assert jobs.get("savedmodel") == 2 * 2  # both models: forward and decode graph
    assert jobs.get("tflite") == 6 * 2
    for upstream in ("prepare_model", "eval_inputs", "reference_logits", "export_onnx", "simplify_onnx"):
        assert upstream not in jobs, (upstream, jobs)
    assert "quantize_onnx" not in jobs and "quantize_pytorch" not in jobs
    # the TFLite backends are evaluated again; timing reruns whole (every backend of the
    # model, in the same rounds) so that no ratio divides figures of two runs
    assert jobs.get("timing") == 2 * 2 and jobs.get("evaluate") == 2 * 3
    assert jobs.get("generation") == 2 * 2


def test_report_contains_plot_and_tables(full_run):
    snakemake(full_run, "--report", "report.zip")
    import zipfile

    names = zipfile.ZipFile(full_run / "report.zip").namelist()
    assert any(n.endswith("plot.png") for n in names)
    assert any(n.endswith("quality.png") for n in names)
    assert any(n.endswith("ship.png") for n in names)
    assert any(n.endswith("summary.csv") for n in names)
    assert any(n.endswith("accuracy.csv") for n in names)
    assert any(n.endswith("generation.png") for n in names)
    assert any(n.endswith("generation.csv") for n in names)


def test_one_target_builds_only_what_it_needs(tmp_path):
    write_config(tmp_path, tiny_config())
    proc = snakemake(tmp_path, "-n", f"results/tiny/seq{SEQ}/tflite_fp16")
    assert planned_jobs(proc.stdout) == {
        "prepare_model": 1,
        "eval_text": 1,
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
    assert jobs["timing"] == 2 and jobs["evaluate"] == 1 and jobs["plot"] == 1


def test_lint_is_clean(tmp_path):
    write_config(tmp_path, tiny_config())
    proc = snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
