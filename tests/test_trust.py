"""Tests that can fail (issue 11, section 6 and the threads item of section 3).

Each test names the bug it catches; each was checked by introducing that bug.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, SEQ, TINY_SPEC
from lmship import StageError

# -- 1. exactly `repeats` timed rows, warm-up untimed ---------------------------------------

WARMUP_SLEEP = 0.2  # a warm-up call is this slow; a timed call is instant


def _counting_fn(warmup: int):
    calls = []

    def fn():
        calls.append(time.perf_counter())
        if len(calls) <= warmup:
            time.sleep(WARMUP_SLEEP)

    return fn, calls


@pytest.mark.parametrize(("warmup", "repeats"), [(0, 1), (1, 4), (3, 2)])
def test_timed_runs_times_exactly_repeats_calls_and_no_warmup(warmup, repeats):
    """Bug: warm-up calls timed, or extra / missing timed calls."""
    from lmship.timing import timed_runs

    fn, calls = _counting_fn(warmup)
    latencies = timed_runs(fn, warmup=warmup, repeats=repeats, min_seconds=0)
    assert len(calls) == warmup + repeats
    assert len(latencies) == repeats
    assert max(latencies) < 1000 * WARMUP_SLEEP / 2, "a warm-up call was timed"


def test_timed_runs_keeps_going_until_min_seconds():
    from lmship.timing import timed_runs

    def fn():
        time.sleep(0.01)

    latencies = timed_runs(fn, warmup=1, repeats=2, min_seconds=0.15)
    assert len(latencies) > 2 and sum(latencies) >= 150 * 0.9


class _FakeSession:
    """Stands in for a runtime session: records the ids of each call; warm-up calls are slow."""

    def __init__(self, warmup: int, threads_in_effect: int | None):
        self.runtime, self.version, self.threads = "fake", "0", 1
        self.threads_in_effect = threads_in_effect
        self.fn, self.calls = _counting_fn(warmup)

    def run(self, ids):
        self.fn()
        return np.zeros((*ids.shape, 4), np.float32)


def _fake_timing(monkeypatch, eval_set, tmp_path, *, warmup=1, repeats=4, threads_in_effect=1):
    import lmship.timing

    session = _FakeSession(warmup, threads_in_effect)
    monkeypatch.setattr(lmship.timing, "open_backend", lambda runtime, artifact, threads, **options: session)
    (tmp_path / "artifact").write_bytes(b"x")
    out = lmship.timing.time_once(
        "fake",
        tmp_path / "artifact",
        eval_set["inputs"],
        tmp_path / "t.csv",
        model="tiny",
        backend="fake",
        precision="fp32",
        threads=1,
        warmup=warmup,
        repeats=repeats,
        min_seconds=0.0,
    )
    with open(out) as f:
        return list(csv.DictReader(f)), session


def test_timing_writes_exactly_repeats_rows_without_warmup(monkeypatch, eval_set, tmp_path):
    """Bug: the timing stage writes the warm-up run as a row (4 repeats + 1 warm-up = 5 rows)."""
    rows, session = _fake_timing(monkeypatch, eval_set, tmp_path, warmup=1, repeats=4)
    assert len(session.calls) == 5
    assert [int(r["repeat"]) for r in rows] == [0, 1, 2, 3]
    assert max(float(r["latency_ms"]) for r in rows) < 1000 * WARMUP_SLEEP / 2


# -- 2. the attention term of the FLOP count, by hand ---------------------------------------


def test_attention_flops_by_hand_tiny():
    """Bug: attention term dropped (or seq instead of seq^2, kv heads instead of heads).

    Dropping it changes the tiny model's total by < 10 %, so the converter comparison misses it.
    """
    from lmship.flops import forward_ops

    arch = TINY_SPEC["architecture"]  # hidden 64, 4 heads (2 kv), 2 layers
    ops = forward_ops(arch, 1, SEQ)
    # per layer and head: QK^T is [24 x 16] @ [16 x 24], AV is [24 x 24] @ [24 x 16];
    # each is 24 * 24 * 16 = 9216 multiply-adds = 18432 ops
    per_head = 2 * (24 * 24 * 16) * 2
    assert ops["attention"] == per_head * 4 * 2 == 294_912
    assert ops["total"] == ops["linear"] + ops["attention"]
    # batch 3 triples it, seq doubled quadruples it
    assert forward_ops(arch, 3, SEQ)["attention"] == 3 * 294_912
    assert forward_ops(arch, 1, 2 * SEQ)["attention"] == 4 * 294_912


def test_attention_flops_by_hand_smollm_135m():
    from conftest import SMOLLM2_135M_ARCH
    from lmship.flops import forward_ops

    cfg = SMOLLM2_135M_ARCH
    # 30 layers x 9 query heads x (QK^T + AV) x 128 x 128 x 64 multiply-adds x 2 ops
    assert forward_ops(cfg, 1, 128)["attention"] == 30 * 9 * 2 * 128 * 128 * 64 * 2 == 1_132_462_080


def test_attention_flops_match_the_exported_graph(simplified):
    """The attention term equals the ops of the graph's activation x activation MatMuls (shape inference)."""
    import onnx

    from lmship.flops import forward_ops

    model = onnx.shape_inference.infer_shapes(onnx.load(str(simplified)))
    inits = {i.name for i in model.graph.initializer}
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]
    }
    ops = 0
    matmuls = 0
    for node in model.graph.node:
        if node.op_type == "MatMul" and not ({node.input[0], node.input[1]} & inits):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            assert all(a) and all(b), f"{node.name}: shapes not static {a} {b}"
            ops += 2 * int(np.prod(a)) * b[-1]
            matmuls += 1
    assert matmuls == 2 * TINY_SPEC["architecture"]["num_hidden_layers"]
    assert ops == forward_ops(TINY_SPEC["architecture"], 1, SEQ)["attention"]


# -- 3. the thread count really in effect in each runtime's timing process -------------------


@pytest.mark.parametrize(
    ("runtime", "artifact"),
    [("pytorch", "hf"), ("onnxruntime", "onnx_simplified.onnx"), ("litert", "tflite_fp32.tflite")],
)
@pytest.mark.parametrize("threads", [1, 2])
def test_threads_in_effect_in_a_fresh_timing_process(
    chain_dir, eval_set, simplified, tflite_models, runtime, artifact, threads, tmp_path
):
    """Bug: a runtime ignores the thread count (runs its default); the CSV would claim ``threads``."""
    from lmship.timing import FIELDS

    out = tmp_path / "t.csv"
    cmd = [
        sys.executable, "-m", "lmship", "timing",
        "--runtime", runtime, "--artifact", str(chain_dir / artifact), "--inputs", str(eval_set["inputs"]),
        "--out", str(out), "--threads", str(threads), "--warmup", "1", "--repeats", "3", "--min-seconds", "0",
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO / "workflow", capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == FIELDS
    assert len(rows) == 3
    assert {(r["threads"], r["threads_in_effect"]) for r in rows} == {(str(threads), str(threads))}


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_tflite_threads_in_effect_other_precisions(chain_dir, tflite_models, precision):
    from lmship.runtimes import open_backend

    assert open_backend("litert", chain_dir / f"tflite_{precision}.tflite", 2).threads_in_effect == 2


def test_timing_fails_when_the_runtime_runs_other_threads(monkeypatch, eval_set, tmp_path):
    """Bug: the check is missing, and a runtime running 2 threads is reported as 1."""
    with pytest.raises(StageError, match="asked fake for 1 intra-op threads but it runs 2"):
        _fake_timing(monkeypatch, eval_set, tmp_path, threads_in_effect=2)
    assert not (tmp_path / "t.csv").exists()


def test_timing_records_unknown_threads_as_empty(monkeypatch, eval_set, tmp_path):
    rows, _ = _fake_timing(monkeypatch, eval_set, tmp_path, threads_in_effect=None)
    assert {r["threads_in_effect"] for r in rows} == {""}


# -- 4. int8 variants are accurate, not only finite -------------------------------------------


def _accuracy(logits: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(top-1 agreement %, relative logit error ||logits - ref|| / ||ref||) over every position."""
    top1 = 100.0 * float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
    rel = float(np.linalg.norm(logits - reference) / np.linalg.norm(reference))
    return top1, rel


# Calibrated on the tiny random model (144 positions, vocab 384: chance is 0.26 % top-1). Measured
# with onnxruntime 1.23.0 / torch of the lock: top-1 100 % for all three; relative logit error
# int8_block 0.010, int8_dynamic 0.017, pytorch_int8 0.027. The bound is about twice the worst.
# Top-1 is weak on this model (see test_accuracy_bounds_reject_a_broken_model); the relative error
# carries the test: scales 25 % off give 0.30 (int8_dynamic, top-1 still 97.9 %), weights not
# loaded into the PyTorch int8 model 1.34 (top-1 still 99.3 %).
INT8_BOUNDS = {"min_top1_pct": 95.0, "max_rel_err": 0.06}
# int8_dynamic's per-tensor activations go through ORT's MatMulInteger kernels, which differ by CPU: the same
# file measured 0.017 here (AVX-512 VNNI) and 0.098 on a CI machine; scales 25 % off still give 0.30.
DYNAMIC_MAX_REL_ERR = 0.15


@pytest.mark.parametrize("variant", ["int8_dynamic", "int8_block"])
def test_ort_int8_is_accurate(simplified, eval_set, tmp_path, variant):
    """Bug: a quantiser that breaks the weights (wrong scale / zero point / bits) but keeps them finite."""
    from lmship.quantize_onnx import quantize_onnx
    from lmship.runtimes import open_backend

    out = tmp_path / f"onnx_{variant}.onnx"
    quantize_onnx(simplified, out, variant=variant)
    session = open_backend("onnxruntime", out, threads=1)
    ids = np.load(eval_set["inputs"])["input_ids"]
    logits = np.stack([session.run(s) for s in ids])
    top1, rel = _accuracy(logits, np.load(eval_set["reference"]))
    print(f"{variant}: top-1 {top1:.2f} %, relative error {rel:.4f}")
    assert top1 >= INT8_BOUNDS["min_top1_pct"]
    assert rel <= (DYNAMIC_MAX_REL_ERR if variant == "int8_dynamic" else INT8_BOUNDS["max_rel_err"])


def test_pytorch_int8_is_accurate(tiny_model, eval_set, tmp_path):
    from lmship.quantize_pytorch import quantize_pytorch
    from lmship.runtimes import open_backend

    quantize_pytorch(tiny_model, tmp_path / "q")
    session = open_backend("pytorch", tmp_path / "q", threads=1)
    ids = np.load(eval_set["inputs"])["input_ids"]
    logits = np.stack([session.run(s) for s in ids])
    top1, rel = _accuracy(logits, np.load(eval_set["reference"]))
    print(f"pytorch_int8: top-1 {top1:.2f} %, relative error {rel:.4f}")
    assert top1 >= INT8_BOUNDS["min_top1_pct"]
    assert rel <= INT8_BOUNDS["max_rel_err"]


def _within_bounds(logits: np.ndarray, reference: np.ndarray) -> bool:
    top1, rel = _accuracy(logits, reference)
    return top1 >= INT8_BOUNDS["min_top1_pct"] and rel <= INT8_BOUNDS["max_rel_err"]


def test_accuracy_bounds_reject_a_broken_model(eval_set):
    """The bounds are not vacuous, and top-1 alone would be.

    The tiny random model (tied embeddings, small weights) mostly predicts its input token:
    the reference's top-1 is the input id at 99.3 % of positions. So a broken model that
    only echoes its input passes any top-1 bound; the relative logit error catches it.
    """
    reference = np.load(eval_set["reference"])
    ids = np.load(eval_set["inputs"])["input_ids"]
    echo = 10.0 * np.eye(reference.shape[-1], dtype=np.float32)[ids]
    assert _accuracy(echo, reference)[0] >= INT8_BOUNDS["min_top1_pct"]
    assert not _within_bounds(echo, reference)
    scrambled = reference[..., np.random.default_rng(0).permutation(reference.shape[-1])]
    assert not _within_bounds(scrambled, reference)
    assert _within_bounds(reference * 1.02, reference)


# -- 5. identical inputs reach every backend ----------------------------------------------------


@pytest.fixture
def spy_runs(monkeypatch):
    """Wrap every runtime's session so that each ``run`` records the ids it receives."""
    import lmship.runtimes as rt

    seen: dict[str, list[np.ndarray]] = {}
    for name in ("pytorch", "onnxruntime", "litert"):
        module = rt.get(name)
        opener = module.open

        def spying(*args, _opener=opener, **kwargs):
            session = _opener(*args, **kwargs)
            inner = session.run
            calls = seen.setdefault(session.runtime, [])

            def run(ids):
                calls.append(np.array(ids, copy=True))
                return inner(ids)

            session.run = run
            return session

        monkeypatch.setattr(module, "open", spying)
    return seen


@pytest.mark.parametrize(
    ("runtime", "artifact"),
    [("pytorch", "hf"), ("onnxruntime", "onnx_simplified.onnx"), ("litert", "tflite_fp32.tflite")],
)
def test_every_backend_gets_the_evaluation_ids(
    chain_dir, eval_set, simplified, tflite_models, spy_runs, runtime, artifact, tmp_path
):
    """Bug: timing or evaluation feeds a backend other ids than the evaluation set's (another
    sample, a re-generated or re-ordered set)."""
    from lmship.evaluate import evaluate
    from lmship.timing import time_once

    ids = np.load(eval_set["inputs"])["input_ids"]
    time_once(
        runtime, chain_dir / artifact, eval_set["inputs"], tmp_path / "t.csv", model="tiny", backend=runtime,
        precision="fp32", threads=1, warmup=1, repeats=2, min_seconds=0.0,
    )  # fmt: skip
    (timed,) = spy_runs.values()
    assert len(timed) == 3
    for call in timed:
        np.testing.assert_array_equal(call, ids[0])
    timed.clear()
    tiers = {"any": {"min_top1_pct": 0, "max_mean_kld": 1e9, "max_ppl_change_pct": 1e9}}
    evaluate(
        runtime, chain_dir / artifact, eval_set["inputs"], eval_set["reference"], tmp_path / "a.json",
        model="tiny", backend=runtime, precision="fp32", tiers=tiers,
    )  # fmt: skip
    (evaluated,) = spy_runs.values()
    np.testing.assert_array_equal(np.stack(evaluated), ids)
