"""Generation graphs (prefill / decode step) and greedy loops on a tiny random Llama.

The tiny model's default initialisation (std 0.02) makes greedy decoding
repeat one token forever, which would hide a broken cache; the ``lively``
model re-draws the tiny model's matrices with std 0.15 so that every step's
argmax depends on the attention over the cache.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

P, L, NEW = 8, 32, 12


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("generation")


@pytest.fixture(scope="module")
def lively(tiny_model, gen_dir) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    out = gen_dir / "lively"
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.15)
    model.save_pretrained(out)
    for f in tiny_model.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def graphs(lively, gen_dir) -> dict[str, Path]:
    from lmship.decode_graph import export_generation_graph
    from lmship.host_tables import host_tables

    paths = {"host": host_tables(lively, gen_dir / "host.npz", prompt_len=P, max_len=L)}
    for graph in ("prefill", "decode"):
        paths[graph] = export_generation_graph(lively, gen_dir / f"{graph}.onnx", graph=graph, prompt_len=P, max_len=L)
    return paths


@pytest.fixture(scope="module")
def prompts() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 384, P), rng.integers(0, 384, P + 3), rng.integers(0, 384, P + 1)]


@pytest.fixture(scope="module")
def reference(lively, prompts):
    from lmship.runtimes import pytorch

    return pytorch.generate(lively, prompts, NEW, L, threads=1, keep_prompt_cache=True)


LOSSLESS = ("onnx", "onnx_simplified", "tflite_fp32")
LOSSY = ("onnx_int8_dynamic", "onnx_int8_block", "tflite_fp16", "tflite_int8")


def _snap_to_q4_1(weight):
    """``weight`` [out, in] moved onto a Q4_1 grid along ``in`` (blocks of 32, fp16 d and m), as GGUF stores it."""
    import torch

    out_dim, k = weight.shape
    blocks = weight.reshape(out_dim, k // 32, 32)
    lo, hi = blocks.min(-1, keepdim=True).values, blocks.max(-1, keepdim=True).values
    d = ((hi - lo) / 15).half().float().clamp_min(1e-4)
    m = lo.half().float()
    q = torch.clamp(torch.round((blocks - m) / d), 0, 15)
    q[..., 0], q[..., 1] = 0, 15  # the block's minimum and maximum sit on the grid's ends
    return (d * q + m).reshape(out_dim, k)


def _snap_to_q8_0(weight):
    """``weight`` [out, in] moved onto a Q8_0 grid along ``in`` (blocks of 32, fp16 d, codes -127..127)."""
    import torch

    out_dim, k = weight.shape
    blocks = weight.reshape(out_dim, k // 32, 32)
    d = (blocks.abs().max(-1, keepdim=True).values / 127).half().float().clamp_min(1e-4)
    q = torch.clamp(torch.round(blocks / d), -127, 127) + 0.0  # integer codes: no -0.0, as GGUF's int8 has none
    return (d * q).reshape(out_dim, k)


def _stage_chain(hf: Path, host: Path, prompts_npz: Path, root: Path, *, tflite_too: bool = True) -> dict:
    """Every generation-graph artifact of ``hf`` made by the workflow's stage functions (with their gates)."""
    from lmship.cli import config_default
    from lmship.export_onnx import export_onnx
    from lmship.quantize_onnx import quantize_onnx
    from lmship.savedmodel import savedmodel
    from lmship.simplify_onnx import simplify_onnx
    from lmship.tflite import tflite

    fp32 = {  # the fp32 stages' logit bounds of the default config
        "max_rel_diff": config_default("conversion_gate", "fp32_max_rel_logit_diff"),
        "max_mean_kld": config_default("conversion_gate", "fp32_max_mean_kld"),
    }
    out: dict[str, dict[str, Path]] = {}
    for graph, length in (("prefill", P), ("decode", L)):
        d = root / f"{graph}{length}"
        d.mkdir(parents=True, exist_ok=True)
        made = out.setdefault(graph, {})
        graph_of = {"graph": graph, "host_npz": host, "min_top1": 99.0, **fp32}
        export_onnx(hf, prompts_npz, None, d / "onnx.onnx", length=length, opset=18, **graph_of)
        made["onnx"] = d / "onnx.onnx"
        simplify_onnx(made["onnx"], prompts_npz, None, d / "onnx_simplified.onnx", hf_dir=hf, **graph_of)
        made["onnx_simplified"] = d / "onnx_simplified.onnx"
        if not tflite_too:
            continue
        for variant in ("int8_dynamic", "int8_block"):
            quantize_onnx(made["onnx_simplified"], d / f"onnx_{variant}.onnx", variant=variant)
            made[f"onnx_{variant}"] = d / f"onnx_{variant}.onnx"
        savedmodel(made["onnx_simplified"], prompts_npz, None, d / "savedmodel", hf_dir=hf, **graph_of)
        for precision, gate in (("fp32", 99.0), ("fp16", 50.0), ("int8", 20.0)):
            tflite(
                d / "savedmodel",
                d / f"tflite_{precision}.tflite",
                precision=precision,
                census_json=d / f"tflite_{precision}.ops.json",
                graph=graph,
                inputs_npz=prompts_npz,
                hf_dir=hf,
                host_npz=host,
                min_top1=gate,
                **(fp32 if precision == "fp32" else {}),
            )
            made[f"tflite_{precision}"] = d / f"tflite_{precision}.tflite"
    return out


@pytest.fixture(scope="module")
def prompts_npz(lively, eval_text, gen_dir) -> Path:
    from lmship.eval_inputs import eval_inputs

    return eval_inputs(
        lively, eval_text, gen_dir / "prompts.npz", seq_len=P, batch_size=1, text_samples=3, random_samples=1, seed=0
    )


@pytest.fixture(scope="module")
def staged(lively, graphs, prompts_npz, gen_dir) -> dict:
    return _stage_chain(lively, graphs["host"], prompts_npz, gen_dir / "staged")


@pytest.fixture(scope="module")
def tflite_graphs(staged) -> dict[str, Path]:
    return {graph: staged[graph]["tflite_fp32"] for graph in ("prefill", "decode")}


@pytest.fixture(scope="module")
def gridded(lively, gen_dir) -> Path:
    """The lively model with every decoder weight on a Q4_1 grid and the embedding and LM head on a Q8_0 one
    (as the default model's GGUF file has them): the 4-bit exact grid applies to it."""
    import torch
    from transformers import AutoModelForCausalLM

    out = gen_dir / "gridded"
    model = AutoModelForCausalLM.from_pretrained(lively, dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 2:
                q8 = "embed_tokens" in name or "lm_head" in name
                param.copy_(_snap_to_q8_0(param) if q8 else _snap_to_q4_1(param))
    model.save_pretrained(out)
    for f in lively.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, out / f.name)
    return out


def test_reference_is_not_degenerate(reference):
    # the checks below are only meaningful if greedy tokens change from step to step
    for tokens in reference.tokens:
        assert len(set(tokens)) > NEW // 2


def test_graphs_are_static_rank2_without_scatter(graphs):
    import onnx

    for graph in ("prefill", "decode"):
        model = onnx.load(str(graphs[graph]))
        assert not [n.op_type for n in model.graph.node if n.op_type.startswith("Scatter")]
        for value in [*model.graph.input, *model.graph.output]:
            dims = value.type.tensor_type.shape.dim
            assert all(d.HasField("dim_value") for d in dims), value.name
            assert len(dims) <= 2, (value.name, len(dims))
    decode = onnx.load(str(graphs["decode"]))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in decode.graph.input}
    assert shapes["mask"] == [1, L + 1]
    assert shapes["k0"] == [2 * L, 16]  # kv_heads * L, head_dim


@pytest.mark.parametrize("runtime", ["onnxruntime", "pytorch"])
def test_decode_graphs_reproduce_pytorch_tokens(runtime, graphs, lively, prompts, reference):
    from lmship.generate import generate, same_text

    if runtime == "pytorch":
        artifacts = (lively, lively)
    else:
        artifacts = (graphs["prefill"], graphs["decode"])
    result = generate(runtime, *artifacts, graphs["host"], prompts, new_tokens=NEW, threads=1)
    for ref, got in zip(reference.tokens, result.tokens, strict=True):
        assert same_text(ref, got) == {"identical": True, "first_divergence": None, "matched_pct": 100.0}
    summary = result.summary()
    assert summary["prompts"] == len(prompts) and summary["new_tokens"] == NEW
    assert all(len(steps) == NEW - 1 for steps in result.decode_ms)


def test_decode_graph_alone_takes_the_whole_prompt(graphs, lively, prompts, reference):
    """Without a prefill graph every prompt token goes through a decode step; the text is the same."""
    from lmship.generate import generate
    from lmship.runtimes import pytorch

    result = generate("onnxruntime", None, graphs["decode"], graphs["host"], prompts, new_tokens=NEW)
    assert result.tokens == reference.tokens
    short = [prompts[0][:3]]  # shorter than P: fine without a prefill graph
    expected = pytorch.generate(lively, short, NEW, L).tokens
    assert generate("onnxruntime", None, graphs["decode"], graphs["host"], short, new_tokens=NEW).tokens == expected


def test_tflite_decode_graph_reproduces_pytorch_tokens(tflite_graphs, graphs, prompts, reference, gen_dir):
    from lmship.files import read_json
    from lmship.generate import generate, validate_graph

    census = read_json(gen_dir / "staged" / f"decode{L}" / "tflite_fp32.ops.json")
    assert census["counts"]["flex"] == 0 and census["counts"]["custom"] == 0
    result = generate(
        "litert", tflite_graphs["prefill"], tflite_graphs["decode"], graphs["host"], prompts, new_tokens=NEW
    )
    assert result.tokens == reference.tokens
    for graph in ("prefill", "decode"):
        metrics = validate_graph(
            graph, "litert", tflite_graphs[graph], graphs["host"], gen_dir / "lively", prompts, max_abs_diff=1e-3
        )
        assert metrics["top1_agreement_pct"] == 100.0


@pytest.mark.parametrize("graph", ["prefill", "decode"])
def test_graph_logits_match_pytorch(graph, graphs, lively, prompts):
    from lmship.generate import validate_graph

    metrics = validate_graph(graph, "onnxruntime", graphs[graph], graphs["host"], lively, prompts, max_abs_diff=1e-3)
    assert metrics["top1_agreement_pct"] == 100.0
    assert metrics["positions"] == (len(prompts) if graph == "prefill" else len(prompts) * 9)


def test_cache_layout_matches_pytorch(graphs, reference, prompts):
    """The prefill's k/v rows and a decode step's new k/v land where PyTorch's cache has them."""
    from lmship.generate import _Graphs, load_host_tables, write_kv, write_prefill_kv

    host = load_host_tables(graphs["host"])
    kv, d = int(host["kv_heads"]), int(host["head_dim"])
    ort = _Graphs("onnxruntime", graphs["prefill"], graphs["decode"], host, threads=1)
    prompt = prompts[2]  # P + 1 tokens: prefill P, then one decode step at position P
    expected = reference.prompt_caches[2]  # per layer [kv_heads, P + 1, head_dim]
    out = ort.prefill({"input_ids": prompt[None, :P], "cos": host["cos"][:P], "sin": host["sin"][:P]})
    caches = []
    for i in range(int(host["layers"])):
        for j, c in enumerate(("k", "v")):
            cache = np.zeros((kv * L, d), np.float32)
            write_prefill_kv(cache, out[f"{c}{i}"], kv)
            np.testing.assert_allclose(cache.reshape(kv, L, d)[:, :P], expected[2 * i + j][:, :P], atol=1e-5)
            assert not cache.reshape(kv, L, d)[:, P:].any()
            caches.append(cache)
    mask = np.full((1, L + 1), host["mask_neg"], np.float32)
    mask[0, :P] = 0.0
    mask[0, -1] = 0.0
    feeds = {"token": prompt[None, P : P + 1], "cos": host["cos"][P : P + 1], "sin": host["sin"][P : P + 1]}
    feeds["mask"] = mask
    names = [f"{c}{i}" for i in range(int(host["layers"])) for c in ("k", "v")]
    feeds.update(zip(names, caches, strict=True))
    step = ort.decode(feeds)
    for n, (name, cache) in enumerate(zip(names, caches, strict=True)):
        assert step["new_" + name].shape == (kv, d)
        write_kv(cache, step["new_" + name], P, kv)
        np.testing.assert_allclose(cache.reshape(kv, L, d)[:, P], expected[n][:, P], atol=1e-5)


def test_bound_ort_runner_reads_the_cache_in_place(graphs):
    """The IOBinding runner binds each input array once: a cache written in place between steps is
    what the next step reads, a converted input (int32 token, strided rows) is copied anew every call,
    and its outputs equal ``session.run``'s on the same feeds."""
    import onnxruntime as ort

    from lmship.generate import load_host_tables
    from lmship.runtimes import open_graph

    host = load_host_tables(graphs["host"])
    plain = ort.InferenceSession(str(graphs["decode"]), providers=["CPUExecutionProvider"])
    run = open_graph("onnxruntime", graphs["decode"], 1)
    rng = np.random.default_rng(3)
    feeds = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in plain.get_inputs()}
    feeds["token"] = np.array([[5]], np.int32)  # not the graph's int64: converted
    feeds["cos"] = np.asfortranarray(host["cos"][P : P + 2])[:1]  # a strided view
    feeds["sin"] = host["sin"][P : P + 1]
    feeds["mask"] = np.zeros((1, L + 1), np.float32)

    def expected() -> dict[str, np.ndarray]:
        fixed = {k: np.ascontiguousarray(v, dtype=np.int64 if k == "token" else np.float32) for k, v in feeds.items()}
        return dict(zip([o.name for o in plain.get_outputs()], plain.run(None, fixed), strict=True))

    first = {k: v.copy() for k, v in run(feeds).items()}
    for name, value in expected().items():
        np.testing.assert_array_equal(first[name], value)
    feeds["k0"][:] = rng.standard_normal(feeds["k0"].shape)  # the host writes the cache in place
    feeds["mask"][0, 3:] = host["mask_neg"]
    feeds["token"][0, 0] = 7
    second = run(feeds)
    want = expected()
    for name, value in want.items():
        np.testing.assert_array_equal(second[name], value)
    assert not np.array_equal(second["logits"], first["logits"])


def test_broken_cache_update_is_caught(graphs, lively, prompts, reference, monkeypatch):
    """Writing the new K/V one slot too far must fail the logits gate and change the text."""
    from lmship import StageError, generate

    right = generate.write_kv

    def off_by_one(cache, new, position, kv_heads):
        right(cache, new, position + 1, kv_heads)

    monkeypatch.setattr(generate, "write_kv", off_by_one)
    with pytest.raises(StageError, match="decode graph"):
        generate.validate_graph(
            "decode", "onnxruntime", graphs["decode"], graphs["host"], lively, prompts, max_abs_diff=1e-3
        )
    result = generate.generate(
        "onnxruntime", graphs["prefill"], graphs["decode"], graphs["host"], prompts, new_tokens=NEW
    )
    checks = [generate.same_text(ref, got) for ref, got in zip(reference.tokens, result.tokens, strict=True)]
    assert not all(c["identical"] for c in checks)
    assert min(c["matched_pct"] for c in checks) < 100.0


def test_prompt_lengths_are_checked(graphs, lively):
    from lmship import StageError
    from lmship.generate import generate
    from lmship.runtimes import pytorch

    rng = np.random.default_rng(1)
    made = (graphs["prefill"], graphs["decode"], graphs["host"])
    with pytest.raises(StageError, match="shorter than the prefill graph's 8 tokens"):
        generate("onnxruntime", *made, [rng.integers(0, 384, P - 1)], new_tokens=2)
    with pytest.raises(StageError, match="longer than the cache of max_len=32"):
        generate("onnxruntime", *made, [rng.integers(0, 384, L + 1)], new_tokens=2)
    with pytest.raises(StageError, match="needs 35 cache slots"):
        generate("onnxruntime", *made, [rng.integers(0, 384, 30)], new_tokens=6)
    with pytest.raises(StageError, match="does not fit max_len"):
        pytorch.generate(lively, [rng.integers(0, 384, 30)], 6, L)


def test_export_refuses_bad_lengths_and_graphs(lively, tmp_path):
    from lmship import StageError
    from lmship.decode_graph import export_generation_graph

    with pytest.raises(StageError, match="must be smaller than max_len"):
        export_generation_graph(lively, tmp_path / "x.onnx", graph="decode", prompt_len=32, max_len=32)
    with pytest.raises(StageError, match="unknown generation graph"):
        export_generation_graph(lively, tmp_path / "x.onnx", graph="forward", prompt_len=8, max_len=32)
    assert not (tmp_path / "x.onnx").exists()


def test_same_text_reports_first_divergence_and_share():
    from lmship.generate import same_text

    assert same_text([1, 2, 3, 4], [1, 2, 3, 4]) == {"identical": True, "first_divergence": None, "matched_pct": 100.0}
    assert same_text([1, 2, 3, 4], [1, 2, 9, 4]) == {"identical": False, "first_divergence": 2, "matched_pct": 75.0}
    assert same_text([1, 2, 3, 4], [5, 6, 7, 8]) == {"identical": False, "first_divergence": 0, "matched_pct": 0.0}
    assert same_text([1, 2, 3, 4], [1, 2]) == {"identical": False, "first_divergence": 2, "matched_pct": 50.0}


def test_gemm_rewrite_feeds_matmulnbits(graphs, lively, prompts, gen_dir):
    import onnx

    from lmship.decode_graph import gemm_to_matmul
    from lmship.generate import validate_graph
    from lmship.quantize_onnx import quantize_onnx

    before = onnx.load(str(graphs["decode"]))
    assert any(n.op_type == "Gemm" for n in before.graph.node)  # 2-D activations: the exporter emits Gemm
    assert gemm_to_matmul(graphs["decode"], gen_dir / "decode.mm.onnx") > 0
    rewritten = gen_dir / "decode.mm.onnx"
    assert not any(n.op_type == "Gemm" for n in onnx.load(str(rewritten)).graph.node)
    validate_graph("decode", "onnxruntime", rewritten, graphs["host"], lively, prompts, max_abs_diff=1e-4)
    quantize_onnx(rewritten, gen_dir / "decode.block.onnx", variant="int8_block")
    ops = {n.op_type for n in onnx.load(str(gen_dir / "decode.block.onnx")).graph.node}
    assert "MatMulNBits" in ops
    metrics = validate_graph(
        "decode", "onnxruntime", gen_dir / "decode.block.onnx", graphs["host"], lively, prompts, min_top1=50.0
    )
    assert metrics["finite"]


@pytest.mark.parametrize("backend", LOSSLESS + LOSSY)
def test_every_format_generates_and_the_lossless_ones_reproduce_pytorch(
    backend, staged, graphs, lively, prompts, reference
):
    """Each format's prefill + decode graphs, as the workflow makes them, in their runtime.

    fp32 formats must give PyTorch's tokens exactly; quantised ones must generate and keep
    most teacher-forced top-1 tokens (their text may differ: that is what the table reports).
    """
    from lmship.backends import BACKENDS
    from lmship.generate import generate, same_text, validate_graph

    runtime = BACKENDS[backend].runtime
    made = {graph: staged[graph][backend] for graph in ("prefill", "decode")}
    result = generate(runtime, made["prefill"], made["decode"], graphs["host"], prompts, new_tokens=NEW)
    checks = [same_text(ref, got) for ref, got in zip(reference.tokens, result.tokens, strict=True)]
    if backend in LOSSLESS:
        assert all(c["identical"] for c in checks), checks
    else:
        assert all(len(t) == NEW for t in result.tokens)
        metrics = validate_graph("decode", runtime, made["decode"], graphs["host"], lively, prompts, min_top1=50.0)
        assert metrics["finite"] and metrics["top1_agreement_pct"] >= 50.0


@pytest.fixture(scope="module")
def gridded_chain(gridded, gen_dir, eval_text) -> dict:
    """The gridded model's host tables, prompts and ONNX generation graphs made by the stage functions."""
    from lmship.eval_inputs import eval_inputs
    from lmship.host_tables import host_tables

    root = gen_dir / "gridded-chain"
    host = host_tables(gridded, root / "host.npz", prompt_len=P, max_len=L)
    npz = eval_inputs(gridded, eval_text, root / "prompts.npz", seq_len=P, batch_size=1, text_samples=2,
                      random_samples=0, seed=0)  # fmt: skip
    return {"root": root, "host": host, "npz": npz, "made": _stage_chain(gridded, host, npz, root, tflite_too=False)}


@pytest.fixture(scope="module")
def gridded_tokens(gridded, prompts) -> list[list[int]]:
    from lmship.runtimes import pytorch

    expected = pytorch.generate(gridded, prompts, NEW, L).tokens
    assert len({t for seq in expected for t in seq}) > NEW // 2  # not a degenerate repeat
    return expected


def test_q4_exact_decode_graph_generates_pytorch_tokens_exactly(gridded_chain, gridded_tokens, prompts):
    """On weights that sit on a Q4_1 grid the 4-bit exact-grid graphs (rank 2, Gemm rewritten) lose nothing."""
    import onnx

    from lmship.generate import generate
    from lmship.quantize_onnx import quantize_onnx

    made, host = gridded_chain["made"], gridded_chain["host"]
    q4 = {}
    for graph in ("prefill", "decode"):
        q4[graph] = made[graph]["onnx_simplified"].with_name("onnx_q4_exact.onnx")
        metrics = quantize_onnx(made[graph]["onnx_simplified"], q4[graph], variant="q4_exact")
        assert metrics["matmul_q4_1"] == metrics["bit_exact_matmul_q4_1"] > 0 and metrics["gemm_to_matmul"] > 0
        assert metrics["matmul_q8_0"] == metrics["bit_exact_matmul_q8_0"] == 1  # the LM head
        assert metrics["gather_q8_0"] == metrics["bit_exact_gather_q8_0"] == 1 and metrics["matmul_fp32"] == 0
        assert "MatMulNBits" in {n.op_type for n in onnx.load(str(q4[graph])).graph.node}
    assert generate("onnxruntime", q4["prefill"], q4["decode"], host, prompts, new_tokens=NEW).tokens == gridded_tokens


@pytest.fixture(scope="module")
def openvino_graphs(gridded, gridded_chain) -> dict[str, dict[str, Path]]:
    """The gridded model's OpenVINO generation IRs: fp32 (gated against PyTorch) and the exact grid."""
    pytest.importorskip("openvino")
    from lmship.compress_openvino import compress_openvino
    from lmship.openvino_ir import openvino_ir

    out: dict[str, dict[str, Path]] = {}
    for graph in ("prefill", "decode"):
        onnx_file = gridded_chain["made"][graph]["onnx"]
        ir = openvino_ir(
            onnx_file, onnx_file.with_name("openvino.xml"), graph=graph, inputs_npz=gridded_chain["npz"],
            hf_dir=gridded, host_npz=gridded_chain["host"], min_top1=99.0,
        )  # fmt: skip
        exact = compress_openvino(
            ir, ir.with_name("openvino_q4_exact.xml"), "q4_exact", metrics_json=ir.with_name("q4_exact.json")
        )
        out[graph] = {"openvino": ir, "openvino_q4_exact": exact, "metrics": ir.with_name("q4_exact.json")}
    return out


@pytest.mark.parametrize("backend", ["openvino", "openvino_q4_exact"])
def test_openvino_generation_reproduces_pytorch_tokens(
    backend, openvino_graphs, gridded_chain, gridded_tokens, prompts
):
    """OpenVINO runs the prefill and decode IRs with the host's cache: fp32 and the exact grid give PyTorch's text."""
    from lmship.generate import generate

    made = {graph: openvino_graphs[graph][backend] for graph in ("prefill", "decode")}
    result = generate("openvino", made["prefill"], made["decode"], gridded_chain["host"], prompts, new_tokens=NEW)
    assert result.tokens == gridded_tokens


def test_openvino_exact_grid_keeps_the_grid_and_fp32_activations(openvino_graphs):
    """Every linear weight is stored as 4-bit codes, the embedding as 8-bit codes, within 1 ulp of the
    originals, and the IR tells the CPU plugin not to quantise activations."""
    import openvino as ov

    from lmship.files import read_json
    from lmship.runtimes.openvino import compile_ir

    for graph in ("prefill", "decode"):
        metrics = read_json(openvino_graphs[graph]["metrics"])
        assert metrics["recipe"]["matmul_q4_1"] > 0 and metrics["recipe"]["matmul_fp32"] == 0, metrics
        assert metrics["recipe"]["gather_q8_0"] == 1, metrics
        recipe = metrics["recipe"]
        assert metrics["verified"]["weights_checked"] == recipe["matmul_q4_1"] + recipe["matmul_q8_0"]
        assert metrics["verified"]["max_error_ulps"] <= 1.0, metrics
        assert {"u4", "u8"} <= set(metrics["weights"]), metrics["weights"]
        compiled = compile_ir(openvino_graphs[graph]["openvino_q4_exact"], 1)
        assert int(compiled.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE")) == 0
        before = ov.Core().read_model(str(openvino_graphs[graph]["openvino"]))
        assert metrics["weights"]["f32"]["bytes"] < 0.2 * before_weight_bytes(before)


def before_weight_bytes(model) -> int:
    return sum(op.get_byte_size() for op in model.get_ordered_ops() if op.get_type_name() == "Constant")


def test_openvino_exact_grid_catches_a_wrong_code(openvino_graphs):
    """A single stored 4-bit code changed makes the verification fail and name the weight."""
    import openvino as ov
    from openvino import opset13 as ops

    from lmship import StageError
    from lmship.compress_openvino import _constant_values, verify_exact_grid

    core = ov.Core()
    original = core.read_model(str(openvino_graphs["decode"]["openvino"]))
    broken = core.read_model(str(openvino_graphs["decode"]["openvino_q4_exact"]))
    assert verify_exact_grid(original, broken)["max_error_ulps"] <= 1.0
    codes = next(
        op for op in broken.get_ordered_ops()
        if op.get_type_name() == "Constant" and op.get_output_element_type(0).get_type_name() == "u4"
    )  # fmt: skip
    values = _constant_values(codes).copy()
    values.flat[0] = (values.flat[0] + 1) % 16
    codes.output(0).replace(ops.constant(values, dtype=ov.Type.u4).output(0))
    with pytest.raises(StageError, match="does not rebuild the original weights"):
        verify_exact_grid(original, broken)


def test_openvino_exact_grid_is_not_applicable_off_the_grid(graphs, gen_dir):
    """The lively model's weights sit on no GGUF grid: the stage refuses to write a 4-bit name over fp32."""
    pytest.importorskip("openvino")
    from lmship import StageError
    from lmship.compress_openvino import compress_openvino
    from lmship.openvino_ir import openvino_ir

    ir = openvino_ir(graphs["decode"], gen_dir / "lively-ov" / "openvino.xml")
    out = gen_dir / "lively-ov" / "openvino_q4_exact.xml"
    with pytest.raises(StageError, match="not applicable: no MatMul weight"):
        compress_openvino(ir, out, "q4_exact")
    assert not out.exists() and not out.with_suffix(".bin").exists()


def test_onnx_exact_grid_off_the_grid_names_its_input_not_a_temporary_file(graphs, gen_dir):
    """The decode graph's Gemms are rewritten into a temporary file first; the refusal names the stage's input."""
    from lmship import StageError
    from lmship.quantize_onnx import quantize_onnx

    out = gen_dir / "lively-q4" / "model.onnx"
    with pytest.raises(StageError, match="not applicable: no MatMul weight") as refused:
        quantize_onnx(graphs["decode"], out, variant="q4_exact")
    assert str(graphs["decode"]) in str(refused.value) and "partial" not in str(refused.value)
    assert not out.exists()


def test_lossless_format_with_other_text_fails_the_generation_stage():
    """The stage's same-text check: a lossless format that diverges fails; a lossy one is reported."""
    from lmship import StageError
    from lmship.generation import same_text_columns

    def rows():
        return [
            {"backend": "pytorch", "round": 0, "prompt": "0", "tokens": "1 2 3 4"},
            {"backend": "pytorch", "round": 1, "prompt": "0", "tokens": "1 2 3 4"},
            {"backend": "onnx", "round": 0, "prompt": "0", "tokens": "1 2 3 4"},
            {"backend": "tflite_int8", "round": 0, "prompt": "0", "tokens": "1 2 9 4"},
        ]

    table = rows()
    differs = same_text_columns(table, "pytorch")
    assert set(differs) == {"tflite_int8"}
    assert [(r["identical"], r["first_divergence"], r["matched_pct"]) for r in table] == [
        (True, "", 100.0),
        (True, "", 100.0),
        (True, "", 100.0),
        (False, 2, 75.0),
    ]
    unsteady = rows()
    unsteady[1]["tokens"] = "1 2 3 5"
    with pytest.raises(StageError, match="PyTorch's own greedy tokens differ between rounds"):
        same_text_columns(unsteady, "pytorch")


def test_exact_text_is_required_of_lossless_formats_with_pytorchs_weights(tmp_path):
    from lmship.files import write_json
    from lmship.generation import lossless_backends

    tiers = {"onnx": "lossless", "tflite_fp16": "lossless", "onnx_q4_exact": "lossless", "tflite_fp32": "8-bit"}
    paths = [write_json(tmp_path / f"{b}.json", {"backend": b, "tier": t}) for b, t in tiers.items()]
    assert lossless_backends(paths, "lossless") == ["onnx", "onnx_q4_exact"]


def test_a_graph_above_the_protobuf_limit_keeps_its_weights_beside_it(lively, graphs, prompts, tmp_path, monkeypatch):
    """A 1B model's generation graphs pass 2 GB: export, Gemm rewrite and quantisers write external data.

    The limit is lowered so that the tiny model is "large"; each file must then hold no weights itself,
    name its ``.data`` file, and still compute PyTorch's logits.
    """
    import onnx

    from lmship import decode_graph, files, quantize_onnx
    from lmship.generate import validate_graph

    monkeypatch.setattr(files, "external_data_needed", lambda weight_bytes: True)
    monkeypatch.setattr(decode_graph, "external_data_needed", lambda weight_bytes: True)
    monkeypatch.setattr(quantize_onnx, "external_data_needed", lambda weight_bytes: True)

    def weights_outside(path: Path) -> None:
        proto = onnx.load(str(path), load_external_data=False)
        big = [t for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
        assert big, f"{path} holds its weights itself"
        assert {e.value for t in big for e in t.external_data if e.key == "location"} == {path.name + ".data"}
        assert (path.parent / (path.name + ".data")).is_file()

    decode = decode_graph.export_generation_graph(
        lively, tmp_path / "decode.onnx", graph="decode", prompt_len=P, max_len=L
    )
    weights_outside(decode)
    assert not list(tmp_path.glob(".*partial*"))
    validate_graph("decode", "onnxruntime", decode, graphs["host"], lively, prompts, max_abs_diff=1e-4)
    assert decode_graph.gemm_to_matmul(decode, tmp_path / "decode.mm.onnx") > 0
    weights_outside(tmp_path / "decode.mm.onnx")
    validate_graph(
        "decode", "onnxruntime", tmp_path / "decode.mm.onnx", graphs["host"], lively, prompts, max_abs_diff=1e-4
    )
    for variant in ("int8_dynamic", "int8_block"):
        out = tmp_path / variant / "model.onnx"
        quantize_onnx.quantize_onnx(decode, out, variant=variant)
        weights_outside(out)
        assert sorted(p.name for p in out.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
        metrics = validate_graph("decode", "onnxruntime", out, graphs["host"], lively, prompts, min_top1=50.0)
        assert metrics["finite"]


# --------------------------------------------------------------------------- the exact grid in the vendors' graphs


def test_ort_genai_exact_grid_keeps_the_builders_graph_and_pytorchs_tokens(gridded, gridded_tokens, prompts, gen_dir):
    """The builder's fp32 graph (GroupQueryAttention, its own cache and loop) with the checkpoint's Q4_1 codes
    in MatMulNBits: every re-encoded weight rebuilds the builder's bit for bit, and the pipeline generates
    PyTorch's tokens and gives its logits. Fails if the re-encoding is skipped (no MatMulNBits), if a weight
    is re-quantised (the proof), or if the rewritten graph computes something else (tokens, logits)."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    import onnx
    import torch
    from transformers import AutoModelForCausalLM

    from lmship.genai_model import genai_model
    from lmship.runtimes import open_backend, ort_genai

    out = gen_dir / "ort_genai_q4_exact"
    metrics = genai_model(gridded, out, variant="q4_exact")
    grid = metrics["exact_grid"]
    assert grid["matmul_q4_1"] == grid["bit_exact_matmul_q4_1"] > 0 and grid["matmul_fp32"] == 0, grid
    assert grid["matmul_q8_0"] == grid["bit_exact_matmul_q8_0"] == 1, grid  # the head, as decode steps run it
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
    assert {"MatMulNBits", "GroupQueryAttention"} <= ops, ops
    assert (out / "genai_config.json").is_file() and not list(out.glob(".*"))
    assert ort_genai.generate(out, prompts, NEW, threads=1).tokens == gridded_tokens
    ids = np.stack([prompts[0]])
    model = AutoModelForCausalLM.from_pretrained(gridded, dtype=torch.float32).eval()
    with torch.inference_mode():
        reference = model(input_ids=torch.from_numpy(ids)).logits.numpy()
    logits = open_backend("ort_genai", out, threads=1).run(ids)
    assert np.abs(logits - reference).max() / reference.std() < 0.01  # the fp32 gate's bound


def test_ort_genai_exact_grid_is_not_applicable_off_the_grid(lively, gen_dir):
    """A model whose weights sit on no GGUF grid gets no 4-bit copy under the exact grid's name."""
    pytest.importorskip("onnxruntime_genai", reason="onnxruntime-genai is not installed")
    from lmship import StageError
    from lmship.genai_model import genai_model
    from lmship.records import found_not_applicable

    out = gen_dir / "ort_genai_q4_exact_off_grid"
    with pytest.raises(StageError) as caught:
        genai_model(lively, out, variant="q4_exact")
    assert found_not_applicable(str(caught.value)) and str(lively) in str(caught.value), caught.value
    assert not out.exists() and not list(gen_dir.glob(f".{out.name}*"))


def test_openvino_genai_exact_grid_generates_pytorchs_tokens(gridded, gridded_chain, gridded_tokens, prompts, gen_dir):
    """The stateful IR OpenVINO GenAI runs, its weights on the checkpoint's grid (u4 codes, within an ulp),
    gated against PyTorch: the pipeline's own loop generates PyTorch's tokens."""
    pytest.importorskip("openvino_genai", reason="openvino-genai is not installed")
    from lmship.runtimes import openvino_genai
    from lmship.stateful_ir import stateful_ir
    from lmship.stateful_ir_q4_exact import stateful_ir_q4_exact

    gate = {"max_rel_diff": 0.01, "max_mean_kld": 1e-5}
    base = stateful_ir(gridded, gridded_chain["npz"], gen_dir / "openvino_genai", max_len=L + NEW, **gate)
    out = gen_dir / "openvino_genai_q4_exact"
    metrics = stateful_ir_q4_exact(Path(base["artifact"]), gridded, gridded_chain["npz"], out, **gate)
    assert metrics["recipe"]["matmul_q4_1"] > 0 and metrics["recipe"]["matmul_fp32"] == 0, metrics["recipe"]
    assert metrics["verified"]["max_error_ulps"] <= 1.0 and "u4" in metrics["weights"], metrics
    assert metrics["vs_pytorch"], metrics
    assert openvino_genai.generate(out, prompts, NEW, threads=1).tokens == gridded_tokens
