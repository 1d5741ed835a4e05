"""OpenVINO IR, NNCF weight compression, bf16 sessions and matmul limits on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from lmship import StageError
from lmship.evalset import load_inputs
from lmship.files import read_json
from lmship.quality import Agreement


def _agreement(session, eval_set) -> dict:
    input_ids, is_text = load_inputs(eval_set["inputs"])
    reference = np.load(eval_set["reference"])
    agreement = Agreement()
    for ref, ids, text in zip(reference, input_ids, is_text, strict=True):
        agreement.add(ref, session.run(ids), ids, bool(text))
    return agreement.summarise()


@pytest.fixture(scope="module")
def ir(onnx_model, chain_dir, eval_set):
    from lmship.openvino_ir import openvino_ir

    return openvino_ir(
        onnx_model,
        chain_dir / "ov" / "model.xml",
        inputs_npz=eval_set["inputs"],
        reference_npy=eval_set["reference"],
        min_top1=99.0,
        census_json=chain_dir / "ov" / "model.census.json",
        metrics_json=chain_dir / "ov" / "convert.json",
    )


def _has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (what lmship.runtimes.require_bf16 asks)."""
    from lmship.backends import BF16_FLAGS
    from lmship.host import cpu_flags

    return bool(set(BF16_FLAGS) & set(cpu_flags()))


def _matmul_weights(census: dict) -> int:
    return census["ops"].get("MatMul", 0)


def test_ir_agrees_with_pytorch(ir, eval_set):
    from lmship.runtimes import open_backend

    assert ir.is_file() and ir.with_suffix(".bin").is_file()
    summary = _agreement(open_backend("openvino", ir, threads=1, precision_hint="f32"), eval_set)
    assert summary["top1_agreement_pct"] == 100.0
    assert summary["kld_mean"] < 1e-6, summary


def test_census_counts_ops_and_fp32_weights(ir, onnx_model, chain_dir):
    import onnx

    census = read_json(chain_dir / "ov" / "model.census.json")
    graph = onnx.load(str(onnx_model))
    onnx_matmuls = sum(n.op_type == "MatMul" for n in graph.graph.node)
    # every ONNX MatMul is one OpenVINO MatMul; the counts add up to the total
    assert _matmul_weights(census) == onnx_matmuls > 0
    assert census["total"] == sum(census["ops"].values())
    # an fp32 IR keeps fp32 weights (compress_to_fp16 would have made them f16)
    assert "f16" not in census["weights"]
    initializer_bytes = sum(
        np.prod(i.dims) * 4 for i in graph.graph.initializer if i.data_type == onnx.TensorProto.FLOAT
    )
    assert census["weights"]["f32"]["bytes"] >= 0.99 * initializer_bytes
    metrics = read_json(chain_dir / "ov" / "convert.json")
    assert metrics["size_mb"] > 0 and metrics["ops_total"] == census["total"]
    assert metrics["vs_pytorch"]["top1_agreement_pct"] == 100.0
    # an IR's size is its .xml and its .bin (the weights): what the summary's size column shows
    from lmship.files import size_bytes

    assert size_bytes(ir) == ir.stat().st_size + ir.with_suffix(".bin").stat().st_size
    assert size_bytes(ir) >= 0.99 * initializer_bytes


def test_ir_below_the_gate_is_refused_and_not_written(onnx_model, eval_set, tmp_path, monkeypatch):
    from lmship import validate
    from lmship.openvino_ir import openvino_ir

    real = validate.compare_with_reference

    def wrong_logits(run, inputs_npz, reference_npy):
        # the IR "computes" logits with the vocabulary reversed: every top-1 token changes
        return real(lambda ids: run(ids)[..., ::-1], inputs_npz, reference_npy)

    monkeypatch.setattr(validate, "compare_with_reference", wrong_logits)
    out = tmp_path / "ov" / "model.xml"
    with pytest.raises(StageError, match=r"openvino_ir: .* agrees with PyTorch on the top-1 token for only"):
        openvino_ir(onnx_model, out, inputs_npz=eval_set["inputs"], reference_npy=eval_set["reference"], min_top1=99.0)
    assert not out.exists() and not out.with_suffix(".bin").exists()
    assert not list(out.parent.iterdir()), "no temporary IR may be left behind"


def test_calibration_windows_avoid_the_evaluated_articles(tiny_model, eval_set, eval_text):
    from lmship.compress_openvino import calibration_windows

    with np.load(eval_set["inputs"]) as data:
        evaluated = data["input_ids"][data["is_text"]]
    windows = calibration_windows(tiny_model, eval_text, eval_set["inputs"], seq_len=evaluated.shape[-1], count=4)
    assert windows.shape == (4, 1, evaluated.shape[-1]) and windows.dtype == np.int64
    for w in windows:
        assert not any(np.array_equal(w[0], e[0]) for e in evaluated), "a calibration window is an evaluated one"
    with pytest.raises(StageError, match="calibration windows asked"):
        calibration_windows(tiny_model, eval_text, eval_set["inputs"], seq_len=evaluated.shape[-1], count=10_000)


@pytest.mark.parametrize(
    ("variant", "element"),
    [("int8_asym", "u8"), ("int8_asym_fp32_head", "u8"), ("int4_asym_g32", "u4"), ("int4_asym_g32_awq", "u4")],
)
def test_compression_changes_weight_types_and_still_runs(ir, eval_set, chain_dir, variant, element):
    from lmship.compress_openvino import compress_openvino
    from lmship.runtimes import open_backend

    input_ids, is_text = load_inputs(eval_set["inputs"])
    calibration = input_ids[is_text][:2]
    out = compress_openvino(
        ir,
        chain_dir / "ov" / f"model.{variant}.xml",
        variant,
        calibration,
        census_json=chain_dir / "ov" / f"{variant}.census.json",
    )
    before = read_json(chain_dir / "ov" / "model.census.json")["weights"]
    after = read_json(chain_dir / "ov" / f"{variant}.census.json")["weights"]
    assert element in after, f"{variant} should store {element} weights, has {sorted(after)}"
    assert after["f32"]["bytes"] < before["f32"]["bytes"] / 2, "most fp32 weight bytes should be gone"
    summary = _agreement(open_backend("openvino", out, threads=1), eval_set)
    assert summary["finite"]
    assert summary["top1_agreement_pct"] > 50.0, summary


def test_data_aware_variant_needs_calibration(ir, chain_dir):
    from lmship.compress_openvino import compress_openvino

    with pytest.raises(StageError, match="calibration"):
        compress_openvino(ir, chain_dir / "ov" / "nocal.xml", "int4_asym_g32_awq", None)


def test_unknown_mode_is_a_clear_error(ir, chain_dir):
    from lmship.compress_openvino import compress_ir

    with pytest.raises(StageError, match="unknown NNCF weight-compression mode 'int5'"):
        compress_ir(ir, chain_dir / "ov" / "bad.xml", mode="int5")


@pytest.mark.parametrize("threads", [1, 2])
def test_thread_count_is_applied(ir, threads):
    import openvino.properties as props

    from lmship.runtimes import open_backend

    session = open_backend("openvino", ir, threads=threads)
    assert session.threads == threads and session.threads_in_effect == threads
    assert session.keepalive.get_property(props.inference_num_threads) == threads


def test_bf16_runs_or_says_why_not(ir, eval_set, monkeypatch):
    import openvino as ov
    import openvino.properties.hint as hints

    import lmship.host
    from lmship.backends import BACKENDS
    from lmship.runtimes import open_backend
    from lmship.runtimes.openvino import BF16_ONE_THREAD_SIGFPE

    # the openvino_bf16 backend is the openvino runtime with the backend's options
    backend = BACKENDS["openvino_bf16"]
    if _has_bf16():
        session = open_backend(backend.runtime, ir, threads=2, **backend.options)
        assert session.keepalive.get_property(hints.inference_precision) == ov.Type.bf16
        summary = _agreement(session, eval_set)
        assert summary["finite"] and summary["top1_agreement_pct"] > 80.0
        f32 = open_backend("openvino", ir, threads=1, precision_hint="f32")
        assert f32.keepalive.get_property(hints.inference_precision) == ov.Type.f32
        if "amx_bf16" in lmship.host.cpu_flags() and ov.__version__.startswith(BF16_ONE_THREAD_SIGFPE):
            # this release dies of SIGFPE compiling bf16 for one thread here: a reason, not a crash
            with pytest.raises(StageError, match="SIGFPE in compile_model"):
                open_backend(backend.runtime, ir, threads=1, **backend.options)
    # a CPU without bf16 (simulated here when the real one has it) gets the clear error
    monkeypatch.setattr(lmship.host, "cpu_flags", lambda: ["avx2", "fma", "avx512f"])
    with pytest.raises(StageError, match="no bf16 instructions"):
        open_backend(backend.runtime, ir, threads=1, **backend.options)


def test_torch_bf16_autocast_returns_fp32_logits(tiny_model, eval_set):
    from lmship.backends import BACKENDS
    from lmship.runtimes import open_backend

    # the pytorch_bf16 backend is the pytorch runtime with the backend's options (bf16 autocast)
    backend = BACKENDS["pytorch_bf16"]
    if not _has_bf16():
        with pytest.raises(StageError, match="no bf16 instructions"):
            open_backend(backend.runtime, tiny_model, threads=1, **backend.options)
        return
    session = open_backend(backend.runtime, tiny_model, threads=1, **backend.options)
    input_ids, _ = load_inputs(eval_set["inputs"])
    logits = session.run(input_ids[0])
    reference = np.load(eval_set["reference"])[0]
    assert logits.dtype == np.float32 and logits.shape == reference.shape
    # bf16 rounding shows: not bit-identical to fp32, but close
    assert 0 < np.abs(logits - reference).max() < 0.5


def test_unknown_precision_hint(ir):
    from lmship.runtimes import open_backend

    with pytest.raises(StageError, match="unknown OpenVINO precision hint 'fp8'"):
        open_backend("openvino", ir, threads=1, precision_hint="fp8")


def test_machine_limit_takes_the_best_kernel_per_arithmetic(tmp_path):
    from lmship.host import cpu_flags
    from lmship.machine_limit import LIMIT_KEYS, limit_of, machine_limit

    result = machine_limit(tmp_path / "t1.json", 1, shapes=((64, 96, 128),))
    assert read_json(tmp_path / "t1.json") == result
    for kind, key in LIMIT_KEYS.items():
        if result[key] is None:  # bf16 on a CPU without it: absent, with the reason
            assert kind == "bf16" and "no bf16 instructions" in result["bf16_absent"]
            assert not {"avx512_bf16", "amx_bf16"} & set(cpu_flags())
            continue
        candidates = result["candidates"][kind]
        assert result[key] == max(candidates.values()) > 0 and candidates[result[f"{kind}_by"]] == result[key]
        assert limit_of(result, kind) == result[key]
        assert any(name.startswith("openvino ") for name in candidates)
    # OpenVINO's FakeQuantize graph must really run as an integer matmul, not fp32
    assert any("I8" in k.upper() or "U8" in k.upper() for k in result["openvino_kernels"]["int8"]), result
    if result["bf16_gflops"] is not None:
        assert any("BF16" in k.upper() for k in result["openvino_kernels"]["bf16"]), result


@pytest.mark.parametrize("group", [0, 64])
def test_dynamic_quantization_setting_is_applied(ir, chain_dir, group):
    from lmship.compress_openvino import compress_openvino
    from lmship.runtimes import open_backend

    out = compress_openvino(ir, chain_dir / "ov" / "model.dq.xml", "int8_asym")
    session = open_backend("openvino", out, threads=1, dynamic_quantization=group)
    assert session.keepalive.get_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") == group


def test_keep_head_leaves_embedding_and_lm_head_fp32(ir, chain_dir):
    import openvino as ov

    from lmship.compress_openvino import compress_openvino, head_and_embedding

    model = ov.Core().read_model(str(ir))
    kept = head_and_embedding(model)
    assert any(model.get_result().input_value(0).get_node().get_friendly_name() == k for k in kept)
    out = compress_openvino(
        ir, chain_dir / "ov" / "model.head.xml", "int8_asym_fp32_head", census_json=chain_dir / "ov" / "head.json"
    )
    compressed = ov.Core().read_model(str(out))
    for op in compressed.get_ordered_ops():
        if op.get_friendly_name() in kept:
            weight = op.input_value(0 if op.get_type_name() == "Gather" else 1).get_node()
            assert weight.get_output_element_type(0) == ov.Type.f32, op.get_friendly_name()
    weights = read_json(chain_dir / "ov" / "head.json")["weights"]
    assert "u8" in weights, "the decoder layers should still be int8"
