"""Each stage function on the tiny random model: real conversions, real runtimes."""

from __future__ import annotations

import contextlib
import csv
import json

import numpy as np
import pytest

from conftest import SEQ, TINY_SPEC
from lmship import StageError
from lmship.files import read_json


def test_prepare_random_is_a_plain_hf_folder(tiny_model):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "prepare.json"):
        assert (tiny_model / name).is_file(), name
    info = read_json(tiny_model / "prepare.json")
    cfg = json.loads((tiny_model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert cfg["hidden_size"] == TINY_SPEC["architecture"]["hidden_size"]
    assert info["params"] > 0


def test_prepare_random_is_seeded(tiny_model, tmp_path):
    from safetensors.numpy import load_file

    from lmship.prepare_model import prepare_model

    again = prepare_model(TINY_SPEC, tmp_path / "again")
    a, b = load_file(tiny_model / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_prepare_local_folder_round_trip(tiny_model, tmp_path):
    """The `local` source: an HF folder on disk (the old project's smollm_local_model)."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmship.prepare_model import prepare_model

    out = prepare_model({"source": "local", "path": str(tiny_model)}, tmp_path / "local")
    ids = torch.arange(10).reshape(1, 10)
    with torch.inference_mode():
        a = AutoModelForCausalLM.from_pretrained(tiny_model).eval()(ids).logits
        b = AutoModelForCausalLM.from_pretrained(out).eval()(ids).logits
    assert torch.equal(a, b)


def test_eval_inputs_are_deterministic_text_then_random(tiny_model, eval_set, tmp_path):
    from transformers import AutoTokenizer

    from lmship.corpus import read_documents
    from lmship.eval_inputs import eval_inputs
    from lmship.evalset import load_inputs

    ids, is_text = load_inputs(eval_set["inputs"])
    assert ids.shape == (6, 1, SEQ) and ids.dtype == np.int64
    assert is_text.tolist() == [True] * 4 + [False] * 2
    again = eval_inputs(
        tiny_model,
        eval_set["text"],
        tmp_path / "again.npz",
        seq_len=SEQ,
        batch_size=1,
        text_samples=4,
        random_samples=2,
        seed=0,
    )
    assert np.array_equal(load_inputs(again)[0], ids)
    # each text window is the start of its own article of the prose
    tok = AutoTokenizer.from_pretrained(tiny_model)
    articles = np.load(eval_set["inputs"])["articles"]
    docs = read_documents(eval_set["text"])
    assert len(set(articles.tolist())) == 4 and len(docs) == 300
    for window, a in zip(ids[:4, 0], articles, strict=True):
        assert window.tolist() == tok(docs[a], add_special_tokens=False)["input_ids"][:SEQ]


def test_eval_set_larger_than_the_prose_is_refused(tiny_model, eval_set, tmp_path):
    from lmship.eval_inputs import eval_inputs

    with pytest.raises(StageError, match=r"only .* articles of at least 100000 tokens"):
        eval_inputs(
            tiny_model,
            eval_set["text"],
            tmp_path / "x.npz",
            seq_len=100000,
            batch_size=1,
            text_samples=1,
            random_samples=0,
            seed=0,
        )


def test_reference_logits_shape_and_perplexity(eval_set):
    logits = np.load(eval_set["reference"])
    assert logits.shape == (6, 1, SEQ, TINY_SPEC["architecture"]["vocab_size"])
    ppl = read_json(eval_set["reference_json"])["perplexity_text"]
    # random weights: close to uniform over the vocabulary
    assert 0.5 * 384 < ppl < 2 * 384


def test_export_checks_against_pytorch(onnx_model, chain_dir):
    import onnx

    onnx.checker.check_model(str(onnx_model))
    m = read_json(chain_dir / "export.json")
    assert m["nodes"] > 10 and m["opset"] == 18
    assert m["vs_pytorch"]["top1_agreement_pct"] == 100.0
    assert m["vs_pytorch"]["max_abs_diff"] < 1e-3


def test_export_gate_fails_the_stage(tiny_model, eval_set, tmp_path):
    """A reference the export cannot match makes the stage fail and leaves no file."""
    from lmship.export_onnx import export_onnx

    wrong = np.load(eval_set["reference"])
    wrong = np.roll(wrong, 1, axis=-1)  # shift every argmax
    np.save(tmp_path / "wrong.npy", wrong)
    with pytest.raises(StageError, match="top-1"):
        export_onnx(tiny_model, eval_set["inputs"], tmp_path / "wrong.npy", tmp_path / "m.onnx", opset=18, min_top1=99)
    assert not (tmp_path / "m.onnx").exists()
    assert not list(tmp_path.glob(".m.onnx*"))


def test_simplify_records_node_counts(simplified, chain_dir):
    m = read_json(chain_dir / "simplify.json")
    assert m["nodes_after"] <= m["nodes_before"]
    assert sum(m["ops_after"].values()) == m["nodes_after"]
    assert m["vs_pytorch"]["top1_agreement_pct"] == 100.0


def test_savedmodel(saved_model, chain_dir):
    assert (saved_model / "saved_model.pb").is_file()
    m = read_json(chain_dir / "savedmodel.json")
    assert m["inputs"] == [{"name": "input_ids", "shape": [1, SEQ], "dtype": "int64"}]
    assert m["vs_pytorch"]["top1_agreement_pct"] == 100.0
    assert not list(chain_dir.glob(".savedmodel.partial*"))


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tflite_builtins_only_with_census(tflite_models, chain_dir, precision):
    m = tflite_models[precision]
    census = read_json(chain_dir / f"tflite_{precision}.ops.json")
    assert census["counts"]["flex"] == 0 and census["counts"]["custom"] == 0
    assert census["total"] == census["counts"]["builtin"] == sum(census["builtin"].values())
    assert "FULLY_CONNECTED" in census["builtin"] or "BATCH_MATMUL" in census["builtin"]
    assert census["input"] == {"shape": [1, SEQ], "type": "int64"}
    assert census["output"]["shape"] == [1, SEQ, 384]
    assert m["converter_arithmetic_ops"] and m["converter_arithmetic_ops"] > 0
    if precision == "fp16":
        assert census["builtin"].get("DEQUANTIZE", 0) > 0
    assert m["vs_pytorch"]["top1_agreement_pct"] >= 95.0


def _det_function():
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([3, 3], tf.float32)])
    def det(x):
        return tf.linalg.det(x)

    return det


def test_op_census_counts_flex_ops():
    """A model with a Flex op (MatrixDeterminant has no builtin kernel) is counted as Flex."""
    import tensorflow as tf

    from lmship.tflite import op_census

    f = _det_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([f.get_concrete_function()], f)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    census = op_census(conv.convert())
    assert census["flex"] == {"FlexMatrixDeterminant": 1}
    assert census["counts"]["builtin"] == 0


def test_tflite_stage_refuses_flex_and_names_the_op(tmp_path):
    import tensorflow as tf

    from lmship.tflite import tflite

    module = tf.Module()
    module.det = _det_function()
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures=module.det)
    with pytest.raises(StageError, match="MatrixDeterminant"):
        tflite(tmp_path / "sm", tmp_path / "m.tflite", precision="fp32")
    assert not (tmp_path / "m.tflite").exists()


def test_flops_match_the_tflite_converter(tflite_models, chain_dir):
    """Our op count from config.json agrees with the TFLite converter's own count."""
    from lmship.flops import forward_ops_from_folder

    ours = forward_ops_from_folder(chain_dir / "hf", 1, SEQ)["total"]
    theirs = tflite_models["fp32"]["converter_arithmetic_ops"]
    assert abs(ours / theirs - 1) < 0.1


def test_flops_of_smollm_135m():
    from conftest import SMOLLM2_135M_ARCH
    from lmship.flops import forward_ops

    cfg = SMOLLM2_135M_ARCH
    ops = forward_ops(cfg, 1, 128)
    assert ops["linear"] == pytest.approx(2 * 128 * (30 * 3_538_944 + 576 * 49152))
    assert ops["total"] / 1e9 == pytest.approx(35.6, abs=0.05)


@pytest.mark.parametrize("variant", ["int8_dynamic", "int8_block"])
def test_quantize_onnx_int8(simplified, eval_set, chain_dir, variant):
    import onnx

    from lmship.quantize_onnx import quantize_onnx
    from lmship.validate import validate_artifact

    out = chain_dir / f"onnx_{variant}.onnx"
    m = quantize_onnx(simplified, out, variant=variant)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulNBits"}
    assert m["size_mb"] < read_json(chain_dir / "simplify.json")["size_mb"]
    check = validate_artifact("onnxruntime", out, eval_set["inputs"], eval_set["reference"], min_top1=0, stage="t")
    assert check["finite"]


def test_quantize_pytorch_round_trip(tiny_model, eval_set, tmp_path):
    from lmship.quantize_pytorch import quantize_pytorch
    from lmship.runtimes import open_backend

    m = quantize_pytorch(tiny_model, tmp_path / "q")
    session = open_backend("pytorch", tmp_path / "q", threads=1)
    # the pytorch runtime finds the quantised folder by its state file and runs the int8 modules
    assert any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in session.keepalive.modules())
    ids = np.load(eval_set["inputs"])["input_ids"][0]
    out = session.run(ids)
    ref = np.load(eval_set["reference"])[0]
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() < 0.5
    assert m["size_mb"] > 0


@pytest.mark.parametrize(
    ("runtime", "artifact"),
    [("pytorch", "hf"), ("onnxruntime", "onnx_simplified.onnx"), ("litert", "tflite_fp32.tflite")],
)
def test_timing_csv(chain_dir, eval_set, tflite_models, runtime, artifact, tmp_path):
    from lmship.timing import FIELDS, time_once

    out = time_once(
        runtime,
        chain_dir / artifact,
        eval_set["inputs"],
        tmp_path / "t.csv",
        model="tiny",
        backend=runtime,
        precision="fp32",
        threads=1,
        warmup=1,
        repeats=4,
        min_seconds=0.0,
    )
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4  # exactly `repeats` with min_seconds 0: the warm-up is not timed
    assert list(rows[0]) == FIELDS
    assert all(float(r["latency_ms"]) > 0 for r in rows)
    assert {r["threads"] for r in rows} == {"1"} and rows[0]["seq_len"] == str(SEQ)
    assert rows[0]["runtime_version"] and rows[0]["cpu_model"]


def test_timing_rejects_zero_threads(chain_dir, eval_set, tmp_path):
    from lmship.timing import time_once

    with pytest.raises(StageError, match="threads"):
        time_once(
            "pytorch",
            chain_dir / "hf",
            eval_set["inputs"],
            tmp_path / "t.csv",
            model="m",
            backend="pytorch",
            precision="fp32",
            threads=0,
            warmup=0,
            repeats=1,
            min_seconds=0,
        )


def test_evaluate_places_the_backend_in_its_tier(simplified, eval_set, tmp_path):
    from lmship.evaluate import evaluate

    def run(tiers: dict) -> dict:
        return evaluate(
            "onnxruntime",
            simplified,
            eval_set["inputs"],
            eval_set["reference"],
            tmp_path / "a.json",
            model="tiny",
            backend="onnx_simplified",
            precision="fp32",
            tiers=tiers,
        )

    strict = {"min_top1_pct": 99.5, "max_mean_kld": 0.0005, "max_ppl_change_pct": 0.1}
    r = run({"lossless": strict})
    assert r["tier"] == "lossless" and r["passed"] and r["tier_missed"] == {}
    assert r["ppl_change_pct"] == pytest.approx(0.0, abs=0.01) and r["kld_mean"] < 1e-8
    assert r["text_positions"] == 4 * SEQ and r["top1_ci95_low"] <= r["top1_pct"] <= r["top1_ci95_high"]
    # a KLD limit no real conversion can meet drops it to the next tier, then to broken
    impossible = {**strict, "max_mean_kld": 0.0}
    r = run({"exact": impossible, "lossless": strict})
    assert r["tier"] == "lossless" and "mean KLD" in r["tier_missed"]["exact"][0]
    r = run({"exact": impossible})
    assert r["tier"] == "broken" and not r["passed"]


def test_evaluate_measures_quality_where_the_runtime_runs_and_says_so(simplified, eval_set, tmp_path, monkeypatch):
    """Bug: a runtime that cannot run at one thread (OpenVINO 2026.4's bf16 on an AMX CPU dies of SIGFPE)
    lost its quality, and with it every row, although quality does not depend on the thread count. Now
    evaluate measures it at the thread count the runtime gives, and the JSON says why."""
    import lmship.evaluate
    from lmship import ThreadsRefusedError
    from lmship.runtimes import open_backend

    def refusing(runtime, artifact, threads, **options):
        if threads == 1:
            raise ThreadsRefusedError("this runtime crashes at one thread here", min_threads=2)
        return open_backend(runtime, artifact, threads, **options)

    monkeypatch.setattr(lmship.evaluate, "open_backend", refusing)
    r = lmship.evaluate.evaluate(
        "onnxruntime", simplified, eval_set["inputs"], eval_set["reference"], tmp_path / "a.json",
        model="tiny", backend="onnx_simplified", precision="fp32", threads=1,
        tiers={"lossless": {"min_top1_pct": 99.5, "max_mean_kld": 0.0005, "max_ppl_change_pct": 0.1}},
    )  # fmt: skip
    assert r["tier"] == "lossless" and r["threads"] == 2, r
    assert r["threads_note"] == "evaluated at 2 threads: this runtime crashes at one thread here"


def test_evaluate_takes_the_gates_figures_only_from_the_same_runtime_and_set(simplified, eval_set, chain_dir, tmp_path):
    """The simplify stage's gate already ran the evaluation set through ONNX Runtime: evaluate takes
    those figures, and measures itself when the runtime, the set or the artifact differ."""
    import json
    import os
    import shutil

    from lmship.evaluate import evaluate

    tiers = {"lossless": {"min_top1_pct": 99.5, "max_mean_kld": 0.0005, "max_ppl_change_pct": 0.1}}
    gate = json.loads((chain_dir / "simplify.json").read_text())
    assert gate["vs_pytorch"]["runtime"] == "onnxruntime" and gate["vs_pytorch"]["samples"] == 6
    artifact = tmp_path / "onnx_simplified.onnx"
    shutil.copy(simplified, artifact)
    planted = {**gate, "artifact": str(artifact), "vs_pytorch": {**gate["vs_pytorch"], "kld_mean": 1.25e-4}}
    stage_json = tmp_path / "simplify.json"
    stage_json.write_text(json.dumps(planted))

    def run(runtime="onnxruntime", reference=eval_set["reference"]) -> dict:
        return evaluate(
            runtime,
            artifact,
            eval_set["inputs"],
            reference,
            tmp_path / "a.json",
            model="tiny",
            backend="onnx_simplified",
            precision="fp32",
            tiers=tiers,
            threads=1,
            stage_json=stage_json,
        )

    r = run()  # the planted figure is taken, not measured again
    assert r["measured_in"] == str(stage_json) and r["kld_mean"] == 1.25e-4 and r["tier"] == "lossless"
    r = run("openvino")  # another runtime measures for itself
    assert r["measured_in"] == "evaluate" and r["kld_mean"] < 1e-8 and r["threads"] == 1
    other = tmp_path / "reference_logits.npy"
    shutil.copy(eval_set["reference"], other)
    assert run(reference=other)["measured_in"] == "evaluate"  # another evaluation set
    later = stage_json.stat().st_mtime + 10
    os.utime(artifact, (later, later))
    assert run()["measured_in"] == "evaluate"  # the artifact changed after its stage measured it


def test_cli_runs_a_stage_alone(tiny_model, eval_set, tmp_path):
    """Every stage is runnable from the command line (here: the eval inputs)."""
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "eval_inputs.npz"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lmship",
            "eval_inputs",
            "--seq-len",
            "16",
            "--hf-dir",
            str(tiny_model),
            "--text-txt",
            str(eval_set["text"]),
            "--out-npz",
            str(out),
        ],
        check=True,
        cwd=REPO / "workflow",
        capture_output=True,
    )
    assert np.load(out)["input_ids"].shape == (42, 1, 16)  # the config's default eval set: 40 text + 2 random


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    from lmship.files import atomic_output

    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    # a killed attempt's leftover is removed by the next one
    (tmp_path / ".out.bin.partial-999999").write_bytes(b"stale")
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    # a stage killed while writing into a failure-recorded (partial) artifact folder leaves its own
    # partial beside that folder: the next attempt at the folder removes both
    folder = tmp_path / "savedmodel"
    (tmp_path / ".savedmodel.partial-111").mkdir()
    (tmp_path / "..savedmodel.partial-111.partial-112-onnx2tf").mkdir()
    with atomic_output(folder) as tmp:
        tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "savedmodel"]


def test_cli_defaults_are_the_config_defaults(simplified, eval_set, tmp_path):
    """A stage run alone judges like the workflow with the default config (the evaluate CLI once
    defaulted to cosine 0.999 / perplexity 1 % while the config's fp32 tolerance was 0.9999 / 0.5 %)."""
    import subprocess
    import sys

    import yaml

    from conftest import REPO

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    out = tmp_path / "a.json"
    cmd = [sys.executable, "-m", "lmship", "evaluate", "--runtime", "onnxruntime", "--backend", "onnx_simplified"]
    cmd += ["--artifact", str(simplified), "--inputs-npz", str(eval_set["inputs"])]
    cmd += ["--reference-npy", str(eval_set["reference"]), "--out-json", str(out)]
    subprocess.run(cmd, check=True, cwd=REPO / "workflow", capture_output=True)
    assert read_json(out)["tiers"] == schema["properties"]["quality_tiers"]["default"]


def test_summary_reference_perplexity_without_other_backends(tmp_path):
    """The reference row's perplexity comes from reference_logits' own metrics: with only
    `pytorch` configured there is no other backend's accuracy file to take it from."""
    import pandas as pd

    from lmship.files import write_json
    from lmship.summary import build_summary
    from lmship.timing import FIELDS

    rows = [
        {f: 0 for f in FIELDS}
        | {
            "run_id": "r1",
            "round": 0,
            "node": "n",
            "model": "m",
            "backend": "pytorch",
            "precision": "fp32",
            "threads": 1,
            "batch": 1,
            "seq_len": 16,
            "repeat": i,
            "latency_ms": 10.0 + i,
            "artifact_mb": 5.0,
        }
        for i in range(3)
    ]
    pd.DataFrame(rows, columns=["run_id", "round", "node", *FIELDS]).to_csv(tmp_path / "t.csv", index=False)
    ref = write_json(tmp_path / "reference_logits.json", {"perplexity_text": 123.4})
    table = build_summary(
        [tmp_path / "t.csv"], [], {("m", 16): ref}, [], {}, max_round_spread_pct=10, max_p90_ratio=1.5
    )
    assert table["perplexity"].tolist() == [123.4]
    assert table["tier"].tolist() == ["reference"] and table["speedup_vs_pytorch"].tolist() == [1.0]


def _without_metadata(model) -> bytes:
    """The serialised model without metadata_props (they hold the exporting file's path and line numbers)."""
    for node in model.graph.node:
        del node.metadata_props[:]
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info, *model.graph.initializer]:
        del value.metadata_props[:]
    del model.graph.metadata_props[:]
    del model.metadata_props[:]
    return model.SerializeToString()


def _slices_graph():
    """Slices that SlicesSplit rewrites, and ones where the partner found first decides (graph order matters)."""
    from onnx import TensorProto, helper, numpy_helper

    const = {"z": [0], "h": [4], "e": [8], "last": [-1], "one": [1]}
    slices = [  # (input, start, end, axes, output)
        ("r", "h", "e", "last", "b1"),  # a partner before the first half
        ("r", "z", "h", "last", "a"),
        ("r", "h", "e", "last", "b2"),  # a second, identical partner: only the first one is split off
        ("y", "h", "e", "last", "o"),
        ("y", "z", "h", "one", "p"),  # its first partner in graph order is o (other axes): no Split
        ("y", "h", "e", "one", "q"),
    ]
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    nodes += [helper.make_node("Slice", list(s[:4]), [s[4]]) for s in slices]
    nodes.append(helper.make_node("Concat", [s[4] for s in slices], ["out"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "slices",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3, 8]) for n in ("x", "y")],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in const.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_sibling_matcher_rewrites_slices_as_the_brute_force_does():
    """onnxscript's optimiser with SlicesSplit's fast matcher makes the graph its stock matcher makes."""
    import onnx_ir as ir
    import onnxscript

    from lmship.dynamo_export import sibling_slice_split

    def optimised(fast: bool):
        model = ir.serde.deserialize_model(_slices_graph())
        with sibling_slice_split() if fast else contextlib.nullcontext():
            onnxscript.optimizer.optimize_ir(model)
        return ir.serde.serialize_model(model)

    stock, fast = optimised(False), optimised(True)
    split = [(list(n.input), list(n.output)) for n in stock.graph.node if n.op_type == "Split"]
    assert split == [(["r"], ["a", "b1"])]  # the rule applied, to the partner first in graph order
    assert fast.SerializeToString() == stock.SerializeToString()


@pytest.mark.parametrize("graph", ["seq", "prefill", "decode"])
def test_export_graph_is_the_stock_optimisers(tiny_model, graph):
    """Every exported graph family is the one torch.onnx.export(optimize=True) makes, node for node."""
    import torch
    from transformers import AutoModelForCausalLM

    from lmship import decode_graph, dynamo_export

    if graph == "seq":
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()

        class LogitsOnly(torch.nn.Module):
            def forward(self, input_ids):
                return model(input_ids=input_ids, use_cache=False).logits

        module, args, names = (
            LogitsOnly().eval(),
            (torch.zeros((1, SEQ), dtype=torch.int64),),
            (["input_ids"], ["logits"]),
        )
    else:
        modules, io, _ = decode_graph.graph_modules(tiny_model, prompt_len=8, max_len=16)
        module = modules[graph]
        args = tuple(torch.from_numpy(a) for a in decode_graph.example_inputs(graph, io, 8))
        names = io.names(graph)
    fast = dynamo_export.export(module, args, opset=18, input_names=names[0], output_names=names[1])
    with torch.inference_mode():
        stock = torch.onnx.export(
            module, args, dynamo=True, opset_version=18, input_names=names[0], output_names=names[1], optimize=True
        )
    assert any(n.op_type == "Slice" for n in stock.model_proto.graph.node)
    assert _without_metadata(fast.model_proto) == _without_metadata(stock.model_proto)
