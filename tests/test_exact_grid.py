"""The lossless 4-bit grid: bit-for-bit proof on GGUF-made weights, refusal where it does not apply."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from lmship import StageError
from lmship.exact_grid import reencode_file, verify_lossless


def _gguf_like_model(path, rng, rows=1):
    """Gather + MatMul + tied head on ``rows`` positions, weights made the way GGUF dequantises Q4_1
    and Q8_0 (fp16 d, m).

    The head multiplies by the embedding's transpose (``E_kn``, as ``gemm_to_matmul`` stores a tied head).
    """
    vocab, hidden, out_dim = 50, 64, 48
    q = rng.integers(0, 16, (out_dim, hidden // 32, 32)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 15  # GGUF sets m to the block's min and d to (max - min) / 15
    d = rng.uniform(0.01, 0.05, (out_dim, hidden // 32, 1)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.3, 0.0, (out_dim, hidden // 32, 1)).astype(np.float16).astype(np.float32)
    w = (d * q + m).reshape(out_dim, hidden).T.copy()  # float32 arithmetic, as GGUF does; [K, N]
    eq = rng.integers(-127, 128, (vocab, hidden // 32, 32)).astype(np.float32)
    eq[..., 0] = 127  # d = max |w| / 127
    ed = rng.uniform(0.001, 0.01, (vocab, hidden // 32, 1)).astype(np.float16).astype(np.float32)
    emb = (ed * eq).reshape(vocab, hidden)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "ids"], ["x"], axis=0),
            helper.make_node("MatMul", ["x", "W"], ["y"]),
            helper.make_node("MatMul", ["x", "E_kn"], ["logits"]),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, rows])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, rows, out_dim]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, rows, vocab]),
        ],
        [
            numpy_helper.from_array(emb, "E"),
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(emb.T.copy(), "E_kn"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.save(model, str(path))
    return vocab


def test_exact_grid_rebuilds_every_weight_bit_for_bit(tmp_path):
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    vocab = _gguf_like_model(tmp_path / "fp32.onnx", rng)
    stats = reencode_file(tmp_path / "fp32.onnx", tmp_path / "q4.onnx")
    assert stats["matmul_q4_1"] == 1 and stats["gather_q8_0"] == 1 and stats["matmul_fp32"] == 0
    assert stats["matmul_q8_0"] == 1  # the tied head, on the embedding's Q8_0 grid
    assert stats["bit_exact_matmul_q4_1"] == 1 and stats["bit_exact_gather_q8_0"] == 1
    assert stats["bit_exact_matmul_q8_0"] == 1
    written = onnx.load(str(tmp_path / "q4.onnx")).graph
    assert "E_kn" not in {i.name for i in written.initializer}  # the head is stored in 4-bit halves, not fp32
    assert [n.op_type for n in written.node].count("MatMulNBits") == 3
    ids = rng.integers(0, vocab, (1, 1))
    ref = ort.InferenceSession(str(tmp_path / "fp32.onnx")).run(None, {"ids": ids})
    got = ort.InferenceSession(str(tmp_path / "q4.onnx")).run(None, {"ids": ids})
    for r, g in zip(ref, got, strict=True):
        assert np.abs(g - r).max() < 1e-5 * np.abs(r).max()
    assert (tmp_path / "q4.onnx").stat().st_size < 0.5 * (tmp_path / "fp32.onnx").stat().st_size


def test_a_head_over_many_rows_stays_fp32(tmp_path):
    """Over more than one row (the forward graph) the Q8_0 head stays one fp32 MatMul: two 4-bit
    products cost more there. The Q4_1 weights are still stored in 4 bits."""
    import onnxruntime as ort

    rng = np.random.default_rng(3)
    vocab = _gguf_like_model(tmp_path / "fp32.onnx", rng, rows=7)
    stats = reencode_file(tmp_path / "fp32.onnx", tmp_path / "q4.onnx")
    assert stats["matmul_q4_1"] == stats["bit_exact_matmul_q4_1"] == 1 and stats["gather_q8_0"] == 1
    assert stats["matmul_q8_0"] == 0 and stats["matmul_q8_0_kept_fp32"] == 1 and stats["matmul_fp32"] == 1
    written = onnx.load(str(tmp_path / "q4.onnx")).graph
    assert "E_kn" in {i.name for i in written.initializer}
    assert [n.op_type for n in written.node].count("MatMulNBits") == 1
    ids = rng.integers(0, vocab, (1, 7))
    ref = ort.InferenceSession(str(tmp_path / "fp32.onnx")).run(None, {"ids": ids})
    got = ort.InferenceSession(str(tmp_path / "q4.onnx")).run(None, {"ids": ids})
    assert np.array_equal(got[1], ref[1])  # the head is the same fp32 MatMul


@pytest.mark.parametrize(
    "tensor",
    ["W_q4", "W_q4_scales", "W_q4_corr", "E_q8", "E_kn_q8hi", "E_kn_q8lo", "E_kn_q8hi_scales", "E_kn_q8lo_zp"],
)
def test_one_changed_code_or_scale_fails_the_proof(tmp_path, tensor):
    rng = np.random.default_rng(1)
    _gguf_like_model(tmp_path / "fp32.onnx", rng)
    reencode_file(tmp_path / "fp32.onnx", tmp_path / "q4.onnx")
    model = onnx.load(str(tmp_path / "q4.onnx"))
    init = next(i for i in model.graph.initializer if i.name == tensor)
    values = numpy_helper.to_array(init).copy()
    flat = values.reshape(-1)
    if values.dtype == np.uint8:
        flat[0] ^= 1  # one code (or zero point) off by one nibble step
    else:
        flat[0] = np.nextafter(flat[0], np.float32(np.inf))  # one scale or minimum off by one ulp
    init.CopyFrom(numpy_helper.from_array(values, tensor))
    with pytest.raises(StageError, match="does not rebuild the original weights bit for bit"):
        verify_lossless(onnx.load(str(tmp_path / "fp32.onnx")), model)


@pytest.mark.parametrize("fault", ["drop_low_half", "add_other_input"])
def test_a_head_without_both_halves_summed_fails_the_proof(tmp_path, fault):
    """The head's two 4-bit halves must read the same input and be added: rebuilt codes alone do not prove it."""
    rng = np.random.default_rng(2)
    _gguf_like_model(tmp_path / "fp32.onnx", rng)
    reencode_file(tmp_path / "fp32.onnx", tmp_path / "q4.onnx")
    model = onnx.load(str(tmp_path / "q4.onnx"))
    add = next(n for n in model.graph.node if n.op_type == "Add" and n.output[0] == "logits")
    if fault == "drop_low_half":
        lo = next(n for n in model.graph.node if n.op_type == "MatMulNBits" and n.input[1] == "E_kn_q8lo")
        model.graph.node.remove(lo)
        add.op_type, add.input[1] = "Identity", ""
        del add.input[1:]
    else:
        add.input[1] = add.input[0]  # high half twice
    with pytest.raises(StageError, match="E_kn"):
        verify_lossless(onnx.load(str(tmp_path / "fp32.onnx")), model)


def test_weights_off_any_grid_are_not_applicable(simplified, chain_dir):
    """Random weights sit on no GGUF grid: the stage refuses instead of writing an fp32 copy."""
    with pytest.raises(StageError, match="not applicable: no MatMul weight"):
        reencode_file(simplified, chain_dir / "not-applicable.onnx")
    assert not (chain_dir / "not-applicable.onnx").exists()
