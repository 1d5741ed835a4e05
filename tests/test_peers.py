"""The peer runtimes users compare against: llama.cpp (GGUF) and ONNX Runtime GenAI, on tiny random models.

Every model family goes through the peer's own converter or builder (:mod:`lmship.gguf`,
:mod:`lmship.genai_model`), runs in its runtime (:mod:`lmship.runtimes.llamacpp`,
:mod:`lmship.runtimes.ort_genai`) and is then checked against
PyTorch: all-position logits of a forward pass, greedy tokens of a generation, threads read back.
A package that is not installed skips its tests with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

#: Tiny shapes per family: 2 layers, 4 query / 2 KV heads, head_dim 32 (256 for K-quant rows where needed).
BASE = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
FAMILIES: dict[str, dict] = {
    "llama": {**BASE, "num_key_value_heads": 2, "rope_theta": 100000.0, "tie_word_embeddings": True},
    "mistral": {**BASE, "num_key_value_heads": 2, "sliding_window": None, "tie_word_embeddings": False},
    "qwen2": {**BASE, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "qwen3": {**BASE, "num_key_value_heads": 2, "head_dim": 32, "tie_word_embeddings": True},
    "phi3": {**BASE, "num_key_value_heads": 2, "tie_word_embeddings": False, "original_max_position_embeddings": 128},
    "gemma3_text": {
        **BASE,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "sliding_window": 16,
        "layer_types": ["sliding_attention", "full_attention"],
        "query_pre_attn_scalar": 32,  # = head_dim, as in the released models (llama.cpp scales by head_dim)
    },
    "gpt2": {"n_embd": 128, "n_layer": 2, "n_head": 4, "n_positions": 128},
}
SEQ = 24


def make_family(family: str, out: Path, tokenizer) -> Path:
    """A tiny random model of ``family`` with ``tokenizer``'s vocabulary, saved as an HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if (out / "config.json").is_file():
        return out
    arch = dict(FAMILIES[family])
    theta = arch.pop("rope_theta", None)
    if theta is not None:
        arch["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
    ids = {k: getattr(tokenizer, f"{k}_id") for k in ("bos_token", "eos_token")}
    config = AutoConfig.for_model(
        family,
        vocab_size=len(tokenizer),
        max_position_embeddings=128,
        bos_token_id=ids["bos_token"],
        eos_token_id=ids["eos_token"],
        pad_token_id=ids["eos_token"],
        **arch,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():  # random weights of a trained model's scale: logits spread over several nats
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.08)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def prompt_ids(tokenizer, count: int = 2, length: int = SEQ) -> list[np.ndarray]:
    from lmship.text import bundled_text

    ids = np.asarray(tokenizer(bundled_text())["input_ids"], dtype=np.int64)
    return [ids[i * length : (i + 1) * length] for i in range(count)]


def torch_logits(hf_dir: Path, ids: np.ndarray) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(input_ids=torch.from_numpy(ids), use_cache=False).logits.float().numpy()


def agreement(reference: np.ndarray, logits: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement (%) and mean KL(ref || logits) over every position."""
    from lmship.quality import kl_divergence

    top1 = 100.0 * float((reference.argmax(-1) == logits.argmax(-1)).mean())
    return top1, float(kl_divergence(reference, logits).mean())


# --------------------------------------------------------------------------- ONNX Runtime GenAI


def test_builder_input_gives_the_rope_base_under_the_name_the_builder_reads(tmp_path):
    from transformers import AutoConfig

    from lmship.genai_model import builder_input

    hf = tmp_path / "hf"
    hf.mkdir()
    config = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64}
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 100000.0}
    (hf / "config.json").write_text(json.dumps(config))
    (hf / "model.safetensors").write_bytes(b"weights")
    folder = builder_input(hf, tmp_path / "input")
    loaded = AutoConfig.from_pretrained(folder)
    # what the 0.10 builder reads: rope_theta if transformers kept it, else rope_embedding_base
    assert not hasattr(loaded, "rope_theta")
    assert loaded.rope_embedding_base == 100000.0
    assert (folder / "model.safetensors").resolve() == (hf / "model.safetensors").resolve()
    assert json.loads((hf / "config.json").read_text()) == config  # the prepared folder is untouched


def test_genai_config_nulls_are_dropped(tmp_path):
    from lmship.genai_model import fix_genai_config

    search = {"do_sample": None, "top_k": None, "temperature": None, "top_p": 0.9, "max_length": 64}
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {}, "search": search}))
    assert sorted(fix_genai_config(tmp_path)) == ["do_sample", "temperature", "top_k"]
    assert json.loads((tmp_path / "genai_config.json").read_text())["search"] == {"top_p": 0.9, "max_length": 64}


def test_ort_genai_refuses_families_its_builder_lacks():
    from lmship.runtimes.ort_genai import not_applicable

    assert "GPT2LMHeadModel" in not_applicable({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    assert not_applicable({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}) is None
    per_layer = {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}
    gemma = {"architectures": ["Gemma3ForCausalLM"], "rope_parameters": per_layer}
    assert "per layer type" in not_applicable(gemma)


def test_the_builder_stage_refusing_a_model_says_not_applicable_first(tmp_path):
    """Bug: the stage prefixed the refusal with its own words ("ORT GenAI builder for ...: not
    applicable: ..."), so Gemma 3's refusal was a failed row to retry, not a not-applicable row."""
    from lmship import StageError
    from lmship.genai_model import genai_model
    from lmship.records import found_not_applicable

    per_layer = {"full_attention": {"rope_theta": 1e6}, "sliding_attention": {"rope_theta": 1e4}}
    config = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "rope_parameters": per_layer}
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(StageError) as caught:
        genai_model(tmp_path / "hf", tmp_path / "out", variant="fp32")
    assert found_not_applicable(str(caught.value)) and "per layer type" in str(caught.value), caught.value
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def bpe_tokenizer():
    from lmship.prepare_model import train_tokenizer

    return train_tokenizer(384)


@pytest.fixture(scope="module")
def og_dir(tmp_path_factory):
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    return tmp_path_factory.mktemp("ort_genai")


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral", "phi3", "gemma3_text"])
def test_ort_genai_fp32_matches_pytorch(family, og_dir, bpe_tokenizer):
    """The builder's fp32 model gives PyTorch's logits at every position, or the family is refused by name."""
    from lmship import StageError
    from lmship.genai_model import build
    from lmship.runtimes import not_applicable, open_backend

    hf = make_family(family, og_dir / f"{family}_hf", bpe_tokenizer)
    config = json.loads((hf / "config.json").read_text())
    reason = not_applicable("ort_genai", config)
    if reason is not None:
        with pytest.raises(StageError, match="not applicable"):
            build(hf, og_dir / f"{family}_fp32")
        pytest.skip(f"{family}: {reason}")
    build(hf, og_dir / f"{family}_fp32")
    session = open_backend("ort_genai", og_dir / f"{family}_fp32", threads=1)
    assert session.threads_in_effect == 1
    ids = np.stack(prompt_ids(bpe_tokenizer, 1))
    reference = torch_logits(hf, ids)
    logits = session.run(ids)
    assert logits.shape == reference.shape and logits.dtype == np.float32
    top1, kld = agreement(reference, logits)
    assert top1 == 100.0, f"{family}: top-1 {top1:.1f}%, mean KLD {kld:.2e}"
    assert np.abs(logits - reference).max() < 1e-3


def test_ort_genai_without_the_fix_reads_the_wrong_rope_base(og_dir, bpe_tokenizer, tmp_path):
    """The builder on the plain transformers-5 folder builds base-10,000 tables; the check names it."""
    import shutil
    import subprocess
    import sys

    from lmship import StageError
    from lmship.genai_model import check_rotary_tables

    hf = make_family("llama", og_dir / "llama_hf", bpe_tokenizer)
    out = tmp_path / "plain"
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out), "-p", "fp32"]
    subprocess.run([*cmd, "-e", "cpu", "-c", str(tmp_path / "cache")], check=True, capture_output=True)
    with pytest.raises(StageError, match=r"base 100000\.0"):
        check_rotary_tables(out, hf)
    shutil.rmtree(out)


def test_ort_genai_generates_pytorch_tokens_and_int4_runs(og_dir, bpe_tokenizer):
    from lmship.genai_model import build
    from lmship.runtimes import open_backend, ort_genai, pytorch

    hf = make_family("llama", og_dir / "llama_hf", bpe_tokenizer)
    model = og_dir / "llama_fp32"
    if not model.exists():
        build(hf, model)
    prompts = prompt_ids(bpe_tokenizer, 2)
    reference = pytorch.generate(hf, prompts, 12, SEQ + 12, threads=1, warmup=False)
    result = ort_genai.generate(model, prompts, 12, threads=1)
    assert result.tokens == reference.tokens
    assert result.threads_in_effect == 1
    assert len(result.ttft_ms) == 2 and all(len(steps) == 11 for steps in result.decode_ms)
    assert result.summary()["decode_ms_median"] > 0
    assert ort_genai.open_model(model, 2)[1] == 2  # the session pool's workers, counted

    metrics = build(hf, og_dir / "llama_int4", precision="int4", accuracy_level=4)
    assert metrics["int4_accuracy_level"] == 4 and metrics["size_mb"] > 0
    ids = np.stack(prompts[:1])
    logits = open_backend("ort_genai", og_dir / "llama_int4", threads=2).run(ids)
    top1, kld = agreement(torch_logits(hf, ids), logits)
    assert np.isfinite(logits).all() and kld < 1.0, f"int4: top-1 {top1:.1f}%, KLD {kld:.3f}"


def test_ort_genai_refuses_phi3_long_rope_by_name():
    from lmship.runtimes.ort_genai import not_applicable

    phi3 = {"architectures": ["Phi3ForCausalLM"], "max_position_embeddings": 131072}
    phi3["original_max_position_embeddings"] = 4096
    phi3["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0]}
    assert "LongRoPE" in not_applicable(phi3)


# --------------------------------------------------------------------------- llama.cpp


@pytest.fixture(scope="module")
def converter():
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    pytest.importorskip("sentencepiece", reason="sentencepiece (needed by llama.cpp's converter) is not installed")
    from lmship.gguf import converter_dir

    return converter_dir()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("llamacpp")


def shipped_tokenizer(converter: Path, llama_dir: Path, vocab: str):
    """A real vocabulary from the vocabulary-only GGUF files llama.cpp ships for its tokenizer tests:
    a pre-tokenizer its converter recognises (a freshly trained one has no known hash)."""
    from transformers import AutoTokenizer

    saved = llama_dir / f"tokenizer_{vocab}"
    if not saved.is_dir():
        tokenizer = AutoTokenizer.from_pretrained(converter / "models", gguf_file=f"ggml-vocab-{vocab}.gguf")
        tokenizer.save_pretrained(saved)
    return AutoTokenizer.from_pretrained(saved)


@pytest.fixture(scope="module")
def gpt2_tokenizer(converter, llama_dir):
    return shipped_tokenizer(converter, llama_dir, "gpt-2")


def test_llamacpp_converter_comes_from_the_installed_sdist(converter):
    from lmship.gguf import converter_architectures, not_applicable_here
    from lmship.runtimes.llamacpp import not_applicable, system_info, version

    source = json.loads((converter / "lmship_source.json").read_text())
    assert source["sdist"] == f"llama_cpp_python-{version()}.tar.gz" and len(source["sha256"]) == 64
    assert {"LlamaForCausalLM", "Qwen3ForCausalLM", "GPT2LMHeadModel"} <= converter_architectures(converter)
    assert "no model class" in not_applicable_here({"architectures": ["NoSuchForCausalLM"]}, converter)
    assert "not among" in not_applicable_here({"architectures": ["NoSuchForCausalLM"]})
    assert "not among" in not_applicable({"architectures": ["NoSuchForCausalLM"]})
    assert not_applicable({"architectures": ["LlamaForCausalLM"]}) is None
    assert "AVX" in system_info() or "NEON" in system_info()


# Phi-3 is not here: its converter class needs a SentencePiece tokenizer.model (with GPT-2's BPE
# vocabulary the file converts but llama.cpp refuses its vocabulary: "unordered_map::at"), and
# transformers 5.23 cannot read a SentencePiece model with the lock's protobuf 4.25.5.
GEMMA3_MISMATCH = pytest.mark.xfail(
    strict=True, reason="measured: tiny Gemma 3 F32 GGUF agrees 91.7 % top-1 (KLD 3-5e-3) with PyTorch, cause open"
)


@pytest.mark.parametrize(
    "family", ["llama", "mistral", "qwen2", "qwen3", pytest.param("gemma3_text", marks=GEMMA3_MISMATCH), "gpt2"]
)
def test_llamacpp_f32_matches_pytorch(family, converter, llama_dir, gpt2_tokenizer):
    """The converter's F32 file gives PyTorch's top-1 at every position, its ids are the tokenizer's."""
    from lmship.gguf import check_vocabulary, convert
    from lmship.runtimes import llamacpp

    # transformers 5 reloads a qwen2 folder's tokenizer as Qwen2Tokenizer: it needs Qwen2's own vocabulary
    tokenizer = shipped_tokenizer(converter, llama_dir, "qwen2") if family == "qwen2" else gpt2_tokenizer
    hf = make_family(family, llama_dir / f"{family}_hf", tokenizer)
    gguf = llama_dir / f"{family}-f32.gguf"
    convert(hf, gguf, outtype="f32", converter=converter)
    assert check_vocabulary(gguf, hf)["differ"] == 0
    session = llamacpp.open(gguf, threads=1, n_ctx=64)
    assert session.threads_in_effect == 1 and session.threads_decode == 1
    ids = np.stack(prompt_ids(tokenizer, 1))
    reference = torch_logits(hf, ids)
    logits = session.run(ids)
    assert logits.shape == reference.shape and logits.dtype == np.float32
    top1, kld = agreement(reference, logits)
    # llama.cpp keeps its KV cache in f16 by default: near-lossless, not bit-exact
    assert top1 >= 95.0 and kld < 1e-3, f"{family}: top-1 {top1:.1f}%, mean KLD {kld:.2e}"


def test_llamacpp_generates_pytorch_tokens_and_quantises(converter, llama_dir, gpt2_tokenizer):
    from lmship.generate import same_text
    from lmship.gguf import convert, quantize
    from lmship.runtimes import llamacpp, pytorch

    hf = make_family("llama", llama_dir / "llama_hf", gpt2_tokenizer)
    f32 = llama_dir / "llama-f32.gguf"
    if not f32.is_file():
        convert(hf, f32, outtype="f32", converter=converter)
    prompts = prompt_ids(gpt2_tokenizer, 2)
    reference = pytorch.generate(hf, prompts, 12, SEQ + 12, threads=1, warmup=False)
    result = llamacpp.generate(f32, prompts, 12, threads=1)
    assert result.threads_in_effect == (1, 1)
    checks = [same_text(r, g) for r, g in zip(reference.tokens, result.tokens, strict=True)]
    assert result.tokens == reference.tokens, f"F32 GGUF vs PyTorch greedy tokens: {checks}"
    assert all(len(steps) == 11 for steps in result.decode_ms) and result.summary()["ttft_ms_median"] > 0

    ids = np.stack(prompts[:1])
    ref_logits = torch_logits(hf, ids)
    sizes = {}
    for qtype in ("q8_0", "q4_k_m"):
        metrics = quantize(f32, llama_dir / f"llama-{qtype}.gguf", qtype)
        sizes[qtype] = metrics["size_mb"]
        logits = llamacpp.open(llama_dir / f"llama-{qtype}.gguf", threads=2, n_ctx=64).run(ids)
        top1, kld = agreement(ref_logits, logits)
        assert np.isfinite(logits).all() and kld < 0.5, f"{qtype}: top-1 {top1:.1f}%, KLD {kld:.3f}"
    assert sizes["q4_k_m"] < sizes["q8_0"] < f32.stat().st_size / 1e6


def test_llamacpp_refuses_a_foreign_vocabulary(converter, llama_dir, gpt2_tokenizer):
    """A GGUF whose token list is not the HF folder's is refused before any logit is compared."""
    from lmship import StageError
    from lmship.gguf import check_vocabulary, convert
    from lmship.prepare_model import train_tokenizer

    hf = make_family("llama", llama_dir / "llama_hf", gpt2_tokenizer)
    gguf = llama_dir / "llama-f32.gguf"
    if not gguf.is_file():
        convert(hf, gguf, outtype="f32", converter=converter)
    other = llama_dir / "other_tokenizer"
    train_tokenizer(384).save_pretrained(other)
    for name in ("config.json",):
        (other / name).write_text((hf / name).read_text())
    with pytest.raises(StageError, match="token ids differently"):
        check_vocabulary(gguf, other)


def test_whitespace_pieces_spelled_with_sentencepieces_mark_are_the_same_token():
    """Bug: Gemma 3's own GGUF spells its whitespace pieces as spaces ('  '), its HF tokenizer as '▁▁'; the
    check refused the file for 30 such ids of 262,144. A different piece is still a difference."""
    from lmship.gguf import vocabulary_differences

    gguf = ["<pad>", "  ", "   ", "\u2581the", "cat"]
    hf = ["<pad>", "\u2581\u2581", "\u2581\u2581\u2581", "\u2581the", "dog"]
    assert vocabulary_differences(gguf, hf) == [4]
    assert vocabulary_differences(gguf, gguf) == []
    assert vocabulary_differences(["\u2581\u2581"], ["\u2581"]) == [0]


def test_peers_lock_pins_every_package_with_hashes_at_the_default_locks_versions():
    """envs/peers.lock (pip-compile of envs/peers.in) adds packages, never another version of one."""
    import re

    repo = Path(__file__).resolve().parents[1]

    def entries(path: Path) -> dict[str, tuple[str, bool]]:
        """name -> (version, whether a hash follows)."""
        found: dict[str, tuple[str, bool]] = {}
        name = None
        for line in path.read_text().splitlines():
            m = re.match(r"^([A-Za-z0-9_.\-]+)==(\S+)", line)
            if m:
                name = m.group(1).lower().replace("_", "-")
                found[name] = (m.group(2), False)
            elif name and line.strip().startswith("--hash=sha256:"):
                found[name] = (found[name][0], True)
        return found

    peers, default = entries(repo / "envs" / "peers.lock"), entries(repo / "envs" / "requirements.lock")
    assert {"llama-cpp-python", "onnxruntime-genai", "sentencepiece"} <= set(peers)
    for name, (pinned, hashed) in peers.items():
        assert hashed, f"{name} has no hash in envs/peers.lock"
        if name in default:
            assert pinned == default[name][0], f"{name}: peers.lock {pinned}, requirements.lock {default[name][0]}"
