"""The generation table on synthetic generation rows: failed formats are rows, not applicable ones listed."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from report_fixtures import OOM, Failure, Generated, write_accuracy, write_generation

from lmship.files import write_json
from lmship.generation_summary import generation_summary

TEXT_DIFFERS = Failure("generation", "text differs from PyTorch's at token 7 of prompt 2")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    """A folder with a tokenizer (the continuations are decoded with the model's own)."""
    from lmship.prepare_model import train_tokenizer

    folder = tmp_path_factory.mktemp("hf")
    train_tokenizer(300).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    return folder


def _generation(tmp_path, tokenizer_dir, per_threads: dict[int, dict], tiers: dict, skipped=None) -> tuple:
    csvs = [write_generation(tmp_path / f"g{t}.csv", backends, threads=t) for t, backends in per_threads.items()]
    bandwidth = [write_json(tmp_path / f"bw{t}.json", {"threads": t, "read_gb_s": 10.0}) for t in per_threads]
    tier_jsons = [write_accuracy(tmp_path / "accuracy", b, q) for b, q in tiers.items()]
    host = tmp_path / "host.npz"
    np.savez(host, layers=2, kv_heads=2, max_len=32, head_dim=8, slots=np.array([32, 32]))
    artifact = tmp_path / "graph.onnx"
    artifact.write_bytes(b"\0" * 2000)
    names = {b for backends in per_threads.values() for b in backends}
    specs = [{"backend": b, "decode": str(tokenizer_dir if b == "pytorch" else artifact)} for b in names]
    out_csv, out_md = tmp_path / "generation.csv", tmp_path / "generation.md"
    generation_summary(
        csvs,
        bandwidth,
        tier_jsons,
        {"m": tokenizer_dir},
        {"m": host},
        {"m": specs},
        out_csv,
        out_md,
        max_round_spread_pct=10,
        max_p90_ratio=1.5,
        skipped=skipped,
    )
    return pd.read_csv(out_csv), out_md.read_text()


def _row(table, backend, threads):
    rows = table[(table["backend"] == backend) & (table["threads"] == threads)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def _table_rows(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| format |")]


def test_failed_generation_formats_are_rows_with_stage_reason_and_log(tmp_path, tokenizer_dir):
    graphs = Failure("savedmodel", OOM)
    per_threads = {
        t: {"pytorch": Generated(50.0), "onnx": TEXT_DIFFERS, "tflite_fp32": graphs, "onnx_int8_block": Generated(10.0)}
        for t in (1, 2)
    }
    tiers = {"onnx": ("lossless", 1e-9, 100.0), "tflite_fp32": graphs, "onnx_int8_block": ("4-bit", 5e-3, 95.0)}
    table, md = _generation(tmp_path, tokenizer_dir, per_threads, tiers)
    for t in (1, 2):
        onnx, tflite = _row(table, "onnx", t), _row(table, "tflite_fp32", t)
        assert onnx["status"] == "failed" and onnx["failed_at"] == "generation" and onnx["tier"] == "lossless"
        assert onnx["log"] == "logs/generation/m_onnx.log" and np.isnan(onnx["decode_ms_median"])
        assert tflite["status"] == "failed" and tflite["failed_at"] == "savedmodel" and tflite["tier"] == "failed"
        assert np.isnan(onnx["vs_pytorch"]) and _row(table, "onnx_int8_block", t)["vs_pytorch"] == pytest.approx(5.0)
    assert "**failed at generation: text differs from PyTorch's at token 7 of prompt 2** [^1]" in md
    assert f"**failed at savedmodel: {OOM}** [^2]" in md and "[^2]: log: `logs/savedmodel/m_tflite_fp32.log`" in md
    tables = md.split("continuation of the first prompt", 1)[0]
    assert {len(re.split(r"(?<!\\)\|", line)) - 2 for line in _table_rows(tables)} == {15}
    # the continuations name the fastest format of each measured tier, never a failed one
    continuation = md.split("continuation of the first prompt", 1)[1]
    assert "fastest 4-bit: ORT int8 block-wise" in continuation
    assert "ORT fp32" not in continuation and "TFLite fp32" not in continuation


def test_not_applicable_generation_formats_are_listed(tmp_path, tokenizer_dir):
    why = "not applicable: OpenVINO 4-bit exact grid needs weights dequantised from a GGUF file"
    table, md = _generation(
        tmp_path,
        tokenizer_dir,
        {1: {"pytorch": Generated(50.0), "onnx": Generated(20.0)}},
        {"onnx": ("lossless", 1e-9, 100.0)},
        skipped={"m": {"openvino_q4_exact": why}},
    )
    na = _row(table, "openvino_q4_exact", 1)
    assert na["status"] == "not applicable" and na["reason"] == why and np.isnan(na["decode_ms_median"])
    assert f"- `openvino_q4_exact`: {why}." in md
    assert not any("OpenVINO 4-bit exact grid" in line for line in _table_rows(md))


def test_every_converted_format_failed_still_gives_the_table(tmp_path, tokenizer_dir):
    table, md = _generation(
        tmp_path,
        tokenizer_dir,
        {1: {"pytorch": Generated(50.0), "onnx": TEXT_DIFFERS, "tflite_fp32": TEXT_DIFFERS}},
        {"onnx": ("lossless", 1e-9, 100.0), "tflite_fp32": ("lossless", 1e-9, 100.0)},
    )
    assert list(table["status"]) == ["ok", "failed", "failed"]
    assert _row(table, "pytorch", 1)["vs_pytorch"] == 1.0
    assert "| PyTorch fp32 | reference |" in md  # the reference's continuation is still shown


def test_a_failed_reference_gives_missing_ratios(tmp_path, tokenizer_dir):
    crash = Failure("generation", "exit -9 (SIGKILL)")
    table, md = _generation(
        tmp_path,
        tokenizer_dir,
        {1: {"pytorch": crash, "onnx": Generated(20.0)}},
        {"onnx": ("lossless", 1e-9, 100.0)},
    )
    assert table["vs_pytorch"].isna().all()
    assert "continuation of the first prompt" not in md  # no reference text to compare with


def test_a_format_its_stage_found_not_applicable_is_listed_not_failed(tmp_path, tokenizer_dir):
    why = "not applicable: one RoPE setting per layer type is more than the ORT GenAI 0.10 builder writes"
    found = Failure("genai_model", why)
    table, md = _generation(
        tmp_path,
        tokenizer_dir,
        {1: {"pytorch": Generated(50.0), "onnx": Generated(20.0), "ort_genai_fp32": found}},
        {"onnx": ("lossless", 1e-9, 100.0), "ort_genai_fp32": found},
    )
    na = _row(table, "ort_genai_fp32", 1)
    assert na["status"] == "not applicable" and na["tier"] == "not applicable" and na["reason"] == why
    assert f"- `ort_genai_fp32`: {why}." in md and "failed at genai_model" not in md
