"""The summary table and its recommendation on synthetic stage records (failed and not applicable formats too)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from report_fixtures import OOM, TIERS, Failure, Timed, write_accuracy, write_reference, write_timing

from lmship.summary import recommendations, summary

NA_BF16 = "not applicable on this CPU: OpenVINO bf16 needs one of the CPU features avx512_bf16, amx_bf16"


def _summary(tmp_path, timings: dict[int, dict], quality: dict, skipped=None) -> tuple[pd.DataFrame, str]:
    """Run the summary stage on timing CSVs (threads -> backend -> Timed | Failure) and accuracy records."""
    timing = tmp_path / "m" / "seq16" / "timing"
    csvs = [write_timing(timing / f"t{t}.csv", backends, threads=t) for t, backends in timings.items()]
    jsons = [write_accuracy(tmp_path / "accuracy", b, q) for b, q in quality.items()]
    out_csv, out_md = tmp_path / "summary.csv", tmp_path / "summary.md"
    summary(
        csvs,
        jsons,
        {("m", 16): write_reference(tmp_path)},
        [],
        {},
        out_csv,
        out_md,
        tiers=TIERS,
        max_round_spread_pct=10,
        max_p90_ratio=1.5,
        skipped=skipped,
    )
    return pd.read_csv(out_csv, keep_default_na=True), out_md.read_text()


def _row(table: pd.DataFrame, backend: str, threads: int) -> pd.Series:
    rows = table[(table["backend"] == backend) & (table["threads"] == threads)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def _table_rows(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| backend ")]


def _cells(line: str) -> int:
    return len(re.split(r"(?<!\\)\|", line)) - 2


def _recommendation(md: str, threads: int) -> str:
    return next(line for line in md.splitlines() if line.startswith(f"- **{threads} thread(s)**"))


def test_a_failed_conversion_is_a_row_and_the_summary_is_still_written(tmp_path):
    oom = Failure("tflite", OOM)
    timings = {t: {"pytorch": Timed(100.0, 1, 500), "onnx": Timed(80.0, 1, 500), "tflite_fp32": oom} for t in (1, 2)}
    table, md = _summary(tmp_path, timings, {"onnx": ("lossless", 1e-9, 100.0), "tflite_fp32": oom})
    for t in (1, 2):
        row = _row(table, "tflite_fp32", t)
        assert row["status"] == "failed" and row["tier"] == "failed" and row["failed_at"] == "tflite"
        assert row["reason"] == OOM and row["log"] == "logs/tflite/m_tflite_fp32.log"
        assert np.isnan(row["median_ms"]) and np.isnan(row["speedup_vs_pytorch"]) and np.isnan(row["kld_mean"])
        assert _row(table, "onnx", t)["status"] == "ok"
    # the md row says where and why, with the log in a footnote; the table keeps its 12 columns
    failed_rows = [line for line in _table_rows(md) if line.startswith("| TFLite fp32 |")]
    assert len(failed_rows) == 2
    assert all(f"failed at tflite: {OOM}" in line and "[^1]" in line for line in failed_rows)
    assert "[^1]: log: `logs/tflite/m_tflite_fp32.log`" in md
    assert {_cells(line) for line in _table_rows(md)} == {12}
    for t in (1, 2):
        assert "lossless: `onnx` 1.25x" in _recommendation(md, t) and "tflite_fp32" not in _recommendation(md, t)


def test_a_reason_with_a_pipe_and_several_lines_stays_one_cell(tmp_path):
    bad = Failure("savedmodel", "onnx2tf raised | ValueError: shape\nTraceback (most recent call last):")
    timings = {1: {"pytorch": Timed(100.0), "tflite_fp16": bad}}
    table, md = _summary(tmp_path, timings, {"tflite_fp16": bad})
    assert {_cells(line) for line in _table_rows(md)} == {12}
    assert "onnx2tf raised \\| ValueError: shape" in md and "Traceback" not in md
    assert _row(table, "tflite_fp16", 1)["reason"] == "onnx2tf raised | ValueError: shape"


def test_a_timing_failure_fails_that_thread_count_and_keeps_the_quality(tmp_path):
    crash = Failure("timing", "exit -11 (SIGSEGV) in round 2 of 3")
    timings = {
        1: {"pytorch": Timed(100.0), "onnx": Timed(50.0), "tflite_fp32": Timed(80.0)},
        2: {"pytorch": Timed(60.0), "onnx": crash, "tflite_fp32": Timed(45.0)},
    }
    quality = {"onnx": ("lossless", 1e-9, 100.0), "tflite_fp32": ("lossless", 2e-9, 100.0)}
    table, md = _summary(tmp_path, timings, quality)
    one, two = _row(table, "onnx", 1), _row(table, "onnx", 2)
    assert one["status"] == "ok" and one["median_ms"] == pytest.approx(50.0)
    assert two["status"] == "failed" and two["failed_at"] == "timing" and np.isnan(two["median_ms"])
    assert two["tier"] == "lossless" and two["kld_mean"] == pytest.approx(1e-9)  # the quality was measured
    assert "lossless: `onnx`" in _recommendation(md, 1)
    assert "lossless: `tflite_fp32`" in _recommendation(md, 2) and "onnx" not in _recommendation(md, 2)


def test_a_failed_evaluation_blanks_the_speed_figure_and_is_never_recommended(tmp_path):
    """Timed fine but its quality could not be measured: no speed figure without its quality, no recommendation."""
    timings = {1: {"pytorch": Timed(100.0), "onnx": Timed(90.0), "tflite_int8": Timed(20.0)}}
    evaluate = Failure("evaluate", "killed for memory (SIGKILL) at 6100 MB peak RSS, declared mem_mb 5000")
    table, md = _summary(tmp_path, timings, {"onnx": ("lossless", 1e-9, 100.0), "tflite_int8": evaluate})
    row = _row(table, "tflite_int8", 1)
    assert row["status"] == "failed" and row["failed_at"] == "evaluate"
    assert np.isnan(row["median_ms"]) and np.isnan(row["speedup_vs_pytorch"]) and np.isnan(row["achieved_gops"])
    rec = _recommendation(md, 1)
    assert "tflite_int8" not in rec and "4-bit: `onnx`" in rec


def test_not_applicable_formats_are_listed_with_their_reason(tmp_path):
    skipped = {"m": {"openvino_bf16": NA_BF16}, "other": {"pytorch_bf16": "not applicable elsewhere"}}
    timings = {t: {"pytorch": Timed(100.0), "onnx": Timed(80.0)} for t in (1, 2)}
    table, md = _summary(tmp_path, timings, {"onnx": ("lossless", 1e-9, 100.0)}, skipped)
    na = table[table["status"] == "not applicable"]
    assert sorted(na["threads"]) == [1, 2] and set(na["backend"]) == {"openvino_bf16"}
    assert set(na["reason"]) == {NA_BF16} and set(na["tier"]) == {"not applicable"}
    assert na["median_ms"].isna().all()
    assert f"- `openvino_bf16`: {NA_BF16}." in md
    assert not any(line.startswith("| OpenVINO bf16 |") for line in _table_rows(md))  # listed, not a table row
    assert "other" not in set(table["model"])  # a model without timings gets no rows from its skip list


def test_a_model_whose_every_converted_format_failed_still_gets_its_tables(tmp_path):
    oom = Failure("export_onnx", OOM)
    timings = {t: {"pytorch": Timed(100.0), "onnx": oom, "tflite_fp16": oom} for t in (1, 2)}
    table, md = _summary(tmp_path, timings, {"onnx": oom, "tflite_fp16": oom})
    assert set(table["status"]) == {"ok", "failed"} and len(table) == 6
    for t in (1, 2):
        rec = _recommendation(md, t)
        assert "lossless: `pytorch` 1.00x (the reference" in rec
        assert "onnx" not in rec and "tflite" not in rec


def test_accuracy_failures_without_any_timing_row_still_get_rows(tmp_path):
    """A format the timing job never named (its artifact never existed) is still a failed row."""
    timings = {t: {"pytorch": Timed(100.0)} for t in (1, 2)}
    table, _ = _summary(tmp_path, timings, {"tflite_fp32": Failure("tflite", OOM)})
    failed = table[table["backend"] == "tflite_fp32"]
    assert sorted(failed["threads"]) == [1, 2] and set(failed["status"]) == {"failed"}


def test_a_failed_reference_gives_missing_ratios_not_an_error(tmp_path):
    crash = Failure("timing", "exit 1: torch import failed")
    timings = {1: {"pytorch": crash, "onnx": Timed(80.0, 1, 500)}}
    table, md = _summary(tmp_path, timings, {"onnx": ("lossless", 1e-9, 100.0)})
    assert table["speedup_vs_pytorch"].isna().all() and table["size_reduction"].isna().all()
    assert "lossless: `onnx` –;" in _recommendation(md, 1) and "–x" not in md


def test_the_measured_lossless_race_names_the_format_that_beats_on_speed_and_size(tmp_path):
    """1 thread, all lossless: the noisy TFLite fp32 figure (±6 %) used to join the tie and win it on a 0.9 MB
    smaller file than OpenVINO's, while TFLite fp16 (faster, half the size, steady) was left out."""
    race = {
        "pytorch": Timed(639.7, 1.0, 542.0),
        "openvino": Timed(429.4, 0.05, 539.7),
        "tflite_fp32": Timed(432.2, 6.0, 538.8),
        "tflite_fp16": Timed(429.8, 0.05, 269.6),
        "onnx": Timed(431.0, 4.0, 544.0),
    }
    quality = {b: ("lossless", 1e-9, 100.0) for b in race if b != "pytorch"}
    table, md = _summary(tmp_path, {1: race}, quality)
    for backend, t in race.items():  # the fixture reproduces the measured figures
        row = _row(table, backend, 1)
        assert row["median_ms"] == pytest.approx(t.median_ms) and row["spread_pct"] == pytest.approx(t.spread_pct)
    rec = _recommendation(md, 1)
    assert "lossless: `tflite_fp16` 1.49x (tied with openvino)" in rec
    assert "tflite_fp32" not in rec and "onnx" not in rec


def test_recommendations_skip_failed_rows_even_with_a_passing_tier(tmp_path):
    timings = {1: {"pytorch": Timed(100.0), "onnx": Timed(50.0), "tflite_fp32": Timed(70.0)}}
    quality = {"onnx": ("lossless", 1e-9, 100.0), "tflite_fp32": ("lossless", 1e-9, 100.0)}
    table, _ = _summary(tmp_path, timings, quality)
    table.loc[table["backend"] == "onnx", "status"] = "failed"  # a record marked failed whatever its figures
    rec = recommendations(table, TIERS)
    assert set(rec["backend"]) == {"tflite_fp32"}


def test_every_format_failed_in_timing_including_the_reference(tmp_path):
    """No figure at all: still a table, no recommendation line to make, nothing divided."""
    crash = Failure("timing", "exit 1: no CPU affinity")
    timings = {1: {"pytorch": crash, "onnx": crash}}
    table, md = _summary(tmp_path, timings, {"onnx": ("lossless", 1e-9, 100.0)})
    assert list(table["status"]) == ["failed", "failed"] and table["median_ms"].isna().all()
    assert table["speedup_vs_pytorch"].isna().all() and table["achieved_gops"].isna().all()
    assert len(_table_rows(md)) == 2 and "fastest of each tier" not in md


def test_the_accuracy_table_keeps_a_failed_record(tmp_path):
    from lmship.accuracy_table import accuracy_table

    jsons = [write_accuracy(tmp_path, "onnx", ("lossless", 1e-9, 100.0)), write_accuracy(tmp_path, "tflite_fp16",
             Failure("tflite", OOM + "\nTraceback ..."))]  # fmt: skip
    table = pd.read_csv(accuracy_table(jsons, tmp_path / "accuracy.csv"))
    failed = table.set_index("backend").loc["tflite_fp16"]
    assert failed["status"] == "failed" and failed["tier"] == "failed" and failed["failed_at"] == "tflite"
    assert failed["reason"] == OOM and failed["log"] == "logs/tflite/m_tflite_fp16.log" and np.isnan(failed["kld_mean"])
    assert table.set_index("backend").loc["onnx", "status"] == "ok"


def test_a_stage_that_finds_its_format_not_applicable_is_listed_not_failed(tmp_path):
    """The exact-grid stage learns only from the weights that a Q4_K_M model has no Q4_1 weight to keep."""
    why = "not applicable: no MatMul weight of m sits on a GGUF Q4_1 grid"
    found = Failure("quantize_onnx", why)
    timings = {t: {"pytorch": Timed(100.0), "onnx": Timed(80.0), "onnx_q4_exact": found} for t in (1, 2)}
    table, md = _summary(tmp_path, timings, {"onnx": ("lossless", 1e-9, 100.0), "onnx_q4_exact": found})
    for t in (1, 2):
        row = _row(table, "onnx_q4_exact", t)
        assert row["status"] == "not applicable" and row["tier"] == "not applicable" and row["reason"] == why
        assert pd.isna(row["failed_at"]) and np.isnan(row["median_ms"])
    assert f"- `onnx_q4_exact`: {why}." in md and "failed at quantize_onnx" not in md
