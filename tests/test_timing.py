"""The timing stage (lmship.timing): exactly ``repeats`` timed passes, the threads each runtime
really runs read back, and the same evaluation ids reaching every backend.

Each test names the bug it catches; each was checked by introducing that bug.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO
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
        "--runtime", runtime, "--artifact", str(chain_dir / artifact), "--inputs-npz", str(eval_set["inputs"]),
        "--out-csv", str(out), "--backend", runtime, "--threads", str(threads),
        "--warmup", "1", "--repeats", "3", "--min-seconds", "0",
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
