"""Generation graphs made by transformers' own exporters: they generate PyTorch's tokens, and the gate catches a
wrong graph.

Tiny random models of three families (Llama, Qwen3 with q/k norms, Gemma 3 text with sliding-window layers,
(1 + w) norms and a scaled embedding), with weights drawn wide enough that the next token depends on the cache.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lmship import StageError

PROMPT_LEN, MAX_LEN, NEW_TOKENS = 6, 24, 12
FAMILIES = {
    "llama": {},
    "qwen3": {"head_dim": 16},
    # every layer's window (32) covers the cache (24 slots): the sliding layers attend to all of it
    "gemma3_text": {"head_dim": 16, "sliding_window": 32, "layer_types": ["sliding_attention", "full_attention"]},
}
DIMS = {
    "vocab_size": 384,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}


def _tiny_model(model_type: str, out: Path, **overrides) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**DIMS, **FAMILIES.get(model_type, {}), **overrides})
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(1.0 + 0.5 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)
    model.save_pretrained(out)
    return out


def _prompts(vocab: int = DIMS["vocab_size"]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    # one prompt as long as the prefill graph, one longer (its tail goes through decode steps)
    return [rng.integers(3, vocab, PROMPT_LEN), rng.integers(3, vocab, PROMPT_LEN + 3)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf_export_models")
    return {family: _tiny_model(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory) -> dict[tuple[str, str], Path]:
    from lmship.hf_export import export_openvino, export_ort

    root = tmp_path_factory.mktemp("hf_export_graphs")
    folders = {}
    for family, hf_dir in models.items():
        folders[family, "ort"] = export_ort(hf_dir, root / f"{family}_ort", prompt_len=PROMPT_LEN, max_len=MAX_LEN)
        folders[family, "openvino"] = export_openvino(hf_dir, root / f"{family}_openvino", max_len=MAX_LEN)
    return folders


@pytest.mark.parametrize("backend", ["ort", "openvino"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_exported_graphs_generate_pytorchs_tokens_and_pass_the_gate(exported, models, family, backend):
    from lmship.hf_export import MADE_BY, check_against_pytorch, generate, read_manifest
    from lmship.runtimes import pytorch

    folder = exported[family, backend]
    manifest = read_manifest(folder)
    assert manifest["made_by"] == MADE_BY
    assert manifest["backend"] == backend
    prompts = _prompts()
    metrics = check_against_pytorch(folder, models[family], prompts, new_tokens=NEW_TOKENS)
    assert metrics["identical_prompts"] == len(prompts)
    assert metrics["positions"] == len(prompts) * NEW_TOKENS
    assert metrics["max_rel_diff"] < 1e-4
    assert metrics["kld_mean"] < 1e-6
    assert metrics["top1_agreement_pct"] == 100.0
    assert metrics["made_by"].startswith(MADE_BY)

    # the greedy loop's result has GenerationResult's shape, and the text depends on the cache: PyTorch
    # without its cache (the last token alone) would answer differently
    result = generate(folder, prompts, new_tokens=NEW_TOKENS, threads=1)
    reference = pytorch.generate(models[family], prompts, NEW_TOKENS, MAX_LEN, warmup=False)
    assert result.tokens == reference.tokens
    assert [len(s) for s in result.decode_ms] == [NEW_TOKENS - 1] * len(prompts)
    assert len(result.ttft_ms) == len(prompts) and all(t > 0 for t in result.ttft_ms)
    assert result.prompt_lens == [p.size for p in prompts]
    assert result.threads_in_effect == 1
    assert result.summary()["made_by"] == result.made_by
    no_cache = pytorch.generate(models[family], [np.array([p[-1]]) for p in prompts], NEW_TOKENS, MAX_LEN, warmup=False)
    assert no_cache.tokens != reference.tokens


def test_ort_graphs_fused_for_the_cpu_pass_the_gate(models, tmp_path):
    from lmship.hf_export import check_against_pytorch, export_ort, read_manifest

    folder = export_ort(models["llama"], tmp_path / "fused", prompt_len=PROMPT_LEN, max_len=MAX_LEN, ort_fusions="cpu")
    ops = read_manifest(folder)["io"]["decode"]["ops"]
    assert any(op.startswith("com.microsoft.") for op in ops), ops
    metrics = check_against_pytorch(folder, models["llama"], _prompts(), new_tokens=NEW_TOKENS)
    assert metrics["identical_prompts"] == 2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_the_ort_exporters_runtime_gives_pytorchs_logits_at_every_position(exported, models, family):
    """The ``ort_exporters`` rows: their quality comes from every position of a window (one decode step per
    token from an empty cache), their text from the prefill and decode graphs; both must be PyTorch's.
    Bug it catches: a cache left over from the previous window (no reset) shifts every later window's logits."""
    from lmship.quality import compare_logits
    from lmship.runtimes import get, open_backend, pytorch

    folder = exported[family, "ort"]
    windows = np.random.default_rng(2).integers(3, DIMS["vocab_size"], (2, 1, PROMPT_LEN + 5))
    session = open_backend("ort_exporters", folder, threads=1)
    assert session.threads_in_effect == 1
    reference = open_backend("pytorch", models[family], threads=1)
    for window in windows:
        want, got = reference.run(window), session.run(window)
        assert got.shape == want.shape
        metrics = compare_logits(list(want[0]), list(got[0]))
        assert metrics["max_rel_diff"] < 1e-4, metrics
        assert metrics["kld_mean"] < 1e-6, metrics
    prompts = _prompts()
    result = get("ort_exporters").generate(folder, prompts, NEW_TOKENS, MAX_LEN, threads=1)
    assert result.tokens == pytorch.generate(models[family], prompts, NEW_TOKENS, MAX_LEN, warmup=False).tokens
    assert [len(s) for s in result.decode_ms] == [NEW_TOKENS - 1] * len(prompts)
    assert result.runtime == "ort_exporters" and result.threads_in_effect == 1


def test_the_exported_onnx_stage_gates_and_describes_its_folder(models, tmp_path):
    from lmship.exported_onnx import GATE_TOKENS, exported_onnx
    from lmship.files import read_json

    inputs = tmp_path / "inputs.npz"
    rng = np.random.default_rng(3)
    np.savez(inputs, input_ids=rng.integers(3, DIMS["vocab_size"], (3, 1, 10)), is_text=np.array([1, 1, 0], bool))
    metrics = exported_onnx(
        models["qwen3"],
        inputs,
        tmp_path / "ort_exporters",
        prompt_len=64,
        max_len=16,
        max_rel_diff=0.01,
        max_mean_kld=1e-5,
    )
    # the prefill graph is no longer than the gate's prompts; the cache holds a prompt and its new tokens
    assert metrics["prompt_len"] == 10
    assert metrics["max_len"] == 10 + GATE_TOKENS
    assert metrics["vs_pytorch"]["identical_prompts"] == 2
    assert read_json(tmp_path / "ort_exporters" / "metrics.json")["prompt_len"] == 10


def _noisy(weight: np.ndarray) -> np.ndarray:
    """``weight`` plus Gaussian noise of a tenth of its spread (additive, so no norm after it can undo it)."""
    noise = np.random.default_rng(1).standard_normal(weight.shape) * 0.1 * float(weight.std())
    return (weight + noise).astype(weight.dtype)


def _perturb_onnx_weight(folder: Path, out: Path) -> str:
    """Copy an ORT export with noise added to the decode graph's first MatMul weight; return the weight's name."""
    import onnx
    from onnx import numpy_helper

    shutil.copytree(folder, out)
    path = out / "decode.onnx"
    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    name = next(n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits)
    weight = numpy_helper.to_array(inits[name])
    inits[name].CopyFrom(numpy_helper.from_array(_noisy(weight), name))
    (out / "decode.onnx.data").unlink()
    onnx.save(model, str(path), save_as_external_data=True, location="decode.onnx.data")
    return name


def _perturb_openvino_weight(folder: Path, out: Path) -> str:
    """Copy an OpenVINO export with noise added to its first constant MatMul weight; return the MatMul's name."""
    import openvino as ov
    import openvino.opset14 as ops

    shutil.copytree(folder, out)
    model = ov.Core().read_model(str(folder / "openvino_model.xml"))
    for node in model.get_ordered_ops():
        if node.get_type_name() != "MatMul":
            continue
        source = node.input_value(1).get_node()
        while source.get_type_name() == "Convert":
            source = source.input_value(0).get_node()
        if source.get_type_name() == "Constant":
            source.output(0).replace(ops.constant(_noisy(source.get_data())).output(0))
            ov.save_model(model, str(out / "openvino_model.xml"), compress_to_fp16=False)
            return node.get_friendly_name()
    raise AssertionError("no MatMul with a constant weight")


@pytest.mark.parametrize("backend", ["ort", "openvino"])
def test_a_planted_wrong_weight_fails_the_gate(exported, models, backend, tmp_path):
    from lmship.hf_export import check_against_pytorch

    perturb = _perturb_onnx_weight if backend == "ort" else _perturb_openvino_weight
    planted = tmp_path / "planted"
    perturb(exported["qwen3", backend], planted)
    with pytest.raises(StageError) as err:
        check_against_pytorch(planted, models["qwen3"], _prompts(), new_tokens=NEW_TOKENS)
    message = str(err.value)
    assert "differs from PyTorch's logits" in message
    assert "transformers.exporters" in message


def test_a_static_cache_longer_than_the_sliding_window_is_refused(tmp_path):
    from lmship.hf_export import export_ort

    hf_dir = _tiny_model("gemma3_text", tmp_path / "gemma", sliding_window=8)
    with pytest.raises(StageError, match="sliding-window layers of 8 positions, shorter than max_len 24"):
        export_ort(hf_dir, tmp_path / "ort", prompt_len=PROMPT_LEN, max_len=MAX_LEN)
    assert not (tmp_path / "ort").exists()


def test_the_stateful_ir_keeps_the_model_past_the_sliding_window(tmp_path):
    from lmship.hf_export import check_against_pytorch, export_openvino

    hf_dir = _tiny_model("gemma3_text", tmp_path / "gemma", sliding_window=4)
    folder = export_openvino(hf_dir, tmp_path / "ov", max_len=MAX_LEN)
    # prompts of 6 and 9 tokens and 12 new ones: every check crosses the 4-position window
    metrics = check_against_pytorch(folder, hf_dir, _prompts(), new_tokens=NEW_TOKENS)
    assert metrics["identical_prompts"] == 2
    assert metrics["max_rel_diff"] < 1e-4


def test_what_is_not_a_causal_lm_is_refused_by_name(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    from lmship.hf_export import export_ort

    folder = tmp_path / "distilbert"
    config = DistilBertConfig(vocab_size=64, dim=32, hidden_dim=64, n_layers=1, n_heads=2)
    DistilBertModel(config).save_pretrained(folder)
    with pytest.raises(StageError, match=r"\(distilbert\) is not a causal language model"):
        export_ort(folder, tmp_path / "out", prompt_len=PROMPT_LEN, max_len=MAX_LEN)


def test_lengths_the_graphs_cannot_serve_are_refused(exported, tmp_path):
    from lmship.hf_export import generate

    folder = exported["llama", "ort"]
    with pytest.raises(StageError, match="shorter than the prefill graph's 6 tokens"):
        generate(folder, [np.arange(3, 3 + PROMPT_LEN - 1)], new_tokens=2)
    with pytest.raises(StageError, match="the folder was exported for 24"):
        generate(folder, [np.arange(3, 3 + PROMPT_LEN)], new_tokens=MAX_LEN)
    not_exported = tmp_path / "empty"
    not_exported.mkdir()
    with pytest.raises(StageError, match=r"not a folder written by lmship\.hf_export"):
        generate(not_exported, [np.arange(3, 9)], new_tokens=2)


def test_openvino_folder_is_laid_out_for_openvino_genai(exported):
    folder = exported["llama", "openvino"]
    manifest = json.loads((folder / "lmship_export.json").read_text())
    names = [port["name"] for port in manifest["io"]["inputs"]]
    # the exporter's three inputs, and the attention mask OpenVINO GenAI sets (declared, not read)
    assert names == ["input_ids", "position_ids", "beam_idx", "attention_mask"]
    assert len(manifest["io"]["state"]) == 2 * DIMS["num_hidden_layers"]
    for name in ("openvino_model.xml", "openvino_model.bin", "config.json", "generation_config.json"):
        assert (folder / name).is_file(), name


def test_openvino_genai_generates_pytorchs_tokens(models, tmp_path):
    pytest.importorskip("openvino_genai", reason="OpenVINO GenAI is installed apart from the lock (its own folder)")
    from lmship.hf_export import export_openvino
    from lmship.prepare_model import train_tokenizer
    from lmship.runtimes import get, pytorch

    hf_dir = models["llama"]
    train_tokenizer(DIMS["vocab_size"]).save_pretrained(hf_dir)
    folder = export_openvino(hf_dir, tmp_path / "genai", max_len=MAX_LEN, tokenizer=True)
    assert (folder / "openvino_tokenizer.xml").is_file()
    prompts = _prompts()
    result = get("openvino_genai").generate(folder, prompts, NEW_TOKENS, MAX_LEN, threads=1)
    reference = pytorch.generate(hf_dir, prompts, NEW_TOKENS, MAX_LEN, warmup=False)
    assert result.tokens == reference.tokens
    assert [len(s) for s in result.decode_ms] == [NEW_TOKENS - 1] * len(prompts)
    # milliseconds: no OpenVINO inference of a decode step takes under 20 µs (a unit slip gives 1000x less)
    assert min(t for s in result.decode_ms for t in s) > 0.02
    assert result.threads_in_effect >= 1


def test_the_command_line_exports_and_gates_a_folder(models, tmp_path):
    """Bug: the command line imports what moved elsewhere (it once imported ``prompts_from_text``
    from the generation loop's module, which no longer has it) and fails before it parses its arguments."""
    import subprocess
    import sys

    from conftest import REPO
    from lmship.files import read_json
    from lmship.prepare_model import train_tokenizer

    hf_dir = tmp_path / "llama"
    shutil.copytree(models["llama"], hf_dir)
    train_tokenizer(DIMS["vocab_size"]).save_pretrained(hf_dir)
    base = [sys.executable, "-m", "lmship.hf_export"]
    export = ["export", "--backend", "ort", "--hf", str(hf_dir), "--out", str(tmp_path / "ort")]
    export += ["--max-len", str(MAX_LEN), "--prompt-len", str(PROMPT_LEN)]
    check = ["check", "--folder", str(tmp_path / "ort"), "--hf", str(hf_dir), "--prompts", "2"]
    check += [
        "--prompt-tokens",
        str(PROMPT_LEN),
        "--new-tokens",
        str(NEW_TOKENS),
        "--metrics",
        str(tmp_path / "m.json"),
    ]
    for args in (export, check):
        proc = subprocess.run(base + args, cwd=REPO / "workflow", capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = read_json(tmp_path / "m.json")
    assert metrics["identical_prompts"] == 2 and metrics["positions"] == 2 * NEW_TOKENS
