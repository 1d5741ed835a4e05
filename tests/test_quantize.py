"""The int8 variants (quantize_onnx, quantize_pytorch) are accurate, not only finite.

Each test names the bug it catches; each was checked by introducing that bug.
"""

from __future__ import annotations

import numpy as np
import pytest

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
