"""The peers (llama.cpp, ONNX Runtime GenAI, OpenVINO GenAI) are rows of the workflow's own tables.

A tiny random Llama with a vocabulary llama.cpp's converter knows (GPT-2's, shipped with llama.cpp
for its tokenizer tests) goes through the workflow with the reference and the peers only: each
peer's artifact is made by its own rule, evaluated on the same windows, timed in the same rounds
and generates in the same generation job, with the same-text check against PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from workflow_helpers import PEERS, snakemake, tiny_config, write_config


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory) -> Path:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    pytest.importorskip("openvino_genai", reason="openvino-genai is not installed")
    from test_peers import make_family, shipped_tokenizer

    from lmship.gguf import converter_dir

    root = tmp_path_factory.mktemp("peers")
    tokenizer = shipped_tokenizer(converter_dir(), root, "gpt-2")
    folder = make_family("llama", root / "user_llama", tokenizer)
    workdir = root / "wd"
    config = tiny_config(backends=["pytorch", *PEERS])
    config["models"] = {"gpt2vocab": {"source": "local", "path": str(folder)}}
    write_config(workdir, config)
    proc = snakemake(workdir, "--cores", "2", "results/summary.csv", "results/generation.csv")
    (workdir / "run.log").write_text(proc.stdout + proc.stderr)
    return workdir


def test_every_peer_is_a_row_with_its_quality_and_speed(peer_run):
    summary = pd.read_csv(peer_run / "results" / "summary.csv")
    for backend in PEERS:
        rows = summary[summary["backend"] == backend]
        assert len(rows) == 2, (backend, rows)  # at 1 and 2 threads
        if backend == "llamacpp_original":  # a local model has no source GGUF file
            assert set(rows["status"]) == {"not applicable"}, rows
            continue
        assert set(rows["status"]) == {"ok"}, rows[["backend", "status", "reason"]]
        assert (rows["median_ms"] > 0).all() and rows["tier"].notna().all(), rows
    # each row says which path made its graphs
    made_by = dict(zip(summary["backend"], summary["made_by"], strict=True))
    assert made_by["pytorch"] == "lmship" and made_by["llamacpp_f32"] == "llama.cpp convert_hf_to_gguf"
    assert made_by["ort_genai_int4"] == "onnxruntime-genai builder"
    assert made_by["openvino_genai"] == "transformers.exporters"
    fp32 = summary[summary["backend"].isin(["llamacpp_f32", "ort_genai_fp32", "openvino_genai"])]
    # fp32 peers compute the model: lossless, their logits match PyTorch's (not only top-1)
    assert set(fp32["tier"]) == {"lossless"}, fp32[["backend", "tier", "kld_mean"]]
    assert (fp32["kld_mean"] < 1e-4).all(), fp32[["backend", "kld_mean"]]


def test_every_generating_peer_generates_pytorchs_text(peer_run):
    generation = pd.read_csv(peer_run / "results" / "generation.csv")
    for backend in ("llamacpp_f32", "ort_genai_fp32", "openvino_genai"):
        rows = generation[generation["backend"] == backend]
        assert len(rows) == 2 and set(rows["status"]) == {"ok"}, (backend, rows)
        assert (rows["same_text_pct"] == 100).all(), rows
        assert (rows["decode_ms_median"] > 0.02).all(), rows  # milliseconds, not a unit slip
