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
    from lmship.backends import BACKENDS

    summary = pd.read_csv(peer_run / "results" / "summary.csv")
    for backend in PEERS:
        rows = summary[summary["backend"] == backend]
        assert len(rows) == 2, (backend, rows)  # at 1 and 2 threads
        if BACKENDS[backend].sources:  # the source GGUF file, its exact grid: a local model has neither
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


def test_a_runtime_not_installed_is_not_applicable_before_any_job(tmp_path):
    """Bug: a peer configured without its runtime installed (the default config, installed from
    envs/requirements.lock only) failed at job time, after its conversion. Now the dry run says
    which package is missing and which lock installs it, and plans none of its jobs."""
    import os
    import subprocess
    import sys

    from workflow_helpers import SNAKEFILE

    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import importlib.util as u\n"
        "_find = u.find_spec\n"
        "u.find_spec = lambda name, package=None: None if name.split('.')[0] == 'llama_cpp' else _find(name, package)\n"
    )
    workdir = tmp_path / "wd"
    write_config(workdir, tiny_config(backends=["pytorch", *PEERS]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hide), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), "-n"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    said = [line for line in out.splitlines() if "llama-cpp-python is not installed" in line]
    named = {b for b in PEERS if b.startswith("llamacpp") and any(b in line for line in said)}
    assert named >= {"llamacpp_f32", "llamacpp_q8_0", "llamacpp_q4_k_m"}, out[-3000:]
    assert all("envs/peers.lock" in line for line in said), said
    assert "rule gguf:" not in proc.stdout, proc.stdout[-3000:]
