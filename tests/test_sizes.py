"""lmship.sizes: a model's size read before any job, and what each stage needs for it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from workflow_helpers import planned_jobs, snakemake, write_config

from lmship import sizes
from lmship.backends import not_applicable
from lmship.gguf_table import gguf_types
from lmship.sizes import (
    ModelSize,
    Need,
    model_gguf_types,
    size_from_config,
    size_from_folder,
    size_from_gguf,
    size_limits,
    stage_need,
)


def _config_and_params(model_type: str, **dims) -> tuple[dict, int]:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **dims)
    model = AutoModelForCausalLM.from_config(config)
    return config.to_dict(), sum(p.numel() for p in model.parameters())


def test_the_safetensors_headers_give_the_exact_parameter_count(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    expected = sum(p.numel() for p in model.parameters())  # the tied head counted once
    size = size_from_folder(tiny_model)
    assert size.params == expected and size.where == "the safetensors headers"


@pytest.mark.parametrize(
    ("model_type", "dims"),
    [
        ("llama", {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
                   "num_key_value_heads": 2, "vocab_size": 300, "tie_word_embeddings": True}),
        ("llama", {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 8,
                   "num_key_value_heads": 8, "head_dim": 16, "vocab_size": 300, "tie_word_embeddings": False}),
    ],
)  # fmt: skip
def test_a_random_models_architecture_gives_its_parameter_count(model_type, dims):
    config, params = _config_and_params(model_type, **dims)
    assert size_from_config(config, "its architecture").params == params


def _tiny_gguf(path, q4_1: bool = False):
    """A two-tensor llama GGUF: fp32 embedding, and a Q4_1 (raw bytes) or F16 attention weight."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_embedding_length(8)
    writer.add_token_list([f"t{i}".encode() for i in range(11)])
    writer.add_tensor("token_embd.weight", np.zeros((11, 8), np.float32))
    if q4_1:  # 32 x 8 values: 8 blocks of 32, 20 bytes each (fp16 d, fp16 m, 16 bytes of nibbles)
        raw = np.zeros((8, 20), np.uint8)
        writer.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q4_1)
    else:
        writer.add_tensor("blk.0.attn_q.weight", np.zeros((32, 8), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_the_gguf_tensor_table_gives_the_parameter_count(tmp_path):
    size = size_from_gguf(_tiny_gguf(tmp_path / "tiny.gguf"))
    assert size.params == 11 * 8 + 32 * 8 and size.vocab == 11 and size.hidden == 8


def test_the_gguf_tensor_table_gives_the_weight_types(tmp_path):
    assert gguf_types(_tiny_gguf(tmp_path / "f16.gguf")) == {"F16": 1, "F32": 1}
    assert gguf_types(_tiny_gguf(tmp_path / "q41.gguf", q4_1=True)) == {"F32": 1, "Q4_1": 1}
    prepared = tmp_path / "hf"
    prepared.mkdir()
    spec = {"source": "pypi_gguf", "package": "x==1", "file": "x.gguf"}
    assert model_gguf_types(spec, prepared) is None  # not fetched yet: unknown, nothing ruled out
    (prepared / "prepare.json").write_text(json.dumps({"gguf_types": {"Q4_K": 3, "Q6_K": 1}}))
    assert model_gguf_types(spec, prepared) == {"Q4_K": 3, "Q6_K": 1}


@pytest.mark.parametrize("backend", ["onnx_q4_exact", "openvino_q4_exact"])
def test_an_exact_grid_format_of_a_gguf_without_q4_1_weights_is_not_applicable(backend):
    why = not_applicable(backend, "pypi_gguf", None, {"F32": 2, "Q4_K": 150, "Q6_K": 20})
    assert why.startswith("not applicable:") and "no Q4_1 tensor (2 F32, 150 Q4_K, 20 Q6_K)" in why, why
    assert not_applicable(backend, "pypi_gguf", None, {"F32": 2, "Q4_1": 150, "Q6_K": 1}) is None
    assert not_applicable(backend, "pypi_gguf", None, None) is None  # unknown until the GGUF is fetched
    assert not_applicable("onnx_int8_block", "pypi_gguf", None, {"Q4_K": 1}) is None


def test_a_model_of_no_gguf_is_not_warned_about_gguf_weight_types(tmp_path):
    """The exact-grid formats of a random model are not applicable by its source, said in the
    summary as before; the warning before any job is for a GGUF whose weight types rule them out."""
    arch = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
    models = {"r": {"source": "random", "seed": 0, "architecture": {**arch, "vocab_size": 512}}}
    write_config(tmp_path, {"models": models, "backends": ["pytorch", "onnx", "onnx_q4_exact", "openvino_q4_exact"]})
    proc = snakemake(tmp_path, "-n")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "q4_exact not applicable" not in out, out[-3000:]
    assert "q4_exact" not in str(planned_jobs(proc.stdout))


def test_a_gguf_model_without_q4_1_weights_is_refused_the_exact_grid_before_any_job(tmp_path):
    """Found by the stage instead, the refusal came after re-encoding the whole model (Gemma 3 270M's
    Q4_K_M file: 8.4 GB of memory, killed before it could say so)."""
    path = _tiny_gguf(tmp_path / "f16.gguf")
    models = {"m": {"source": "gguf", "path": str(path)}}
    write_config(tmp_path, {"models": models, "backends": ["pytorch", "onnx", "onnx_q4_exact", "openvino_q4_exact"]})
    proc = snakemake(tmp_path, "-n")
    out = proc.stdout + proc.stderr
    for backend, label in (
        ("onnx_q4_exact", "ORT 4-bit exact grid"),
        ("openvino_q4_exact", "OpenVINO 4-bit exact grid"),
    ):
        assert f"m: {backend} not applicable: {label} keeps Q4_1 weights losslessly" in out, out[-3000:]
    assert "results/m/seq128/onnx_q4_exact" not in proc.stdout and "q4_exact" not in str(planned_jobs(proc.stdout))


def test_a_stage_cost_is_a_line_fitted_through_its_measurements(monkeypatch):
    measured = [
        {"stage": "tflite", "variant": "fp32", "params": 100_000_000, "peak_mb": 6000, "seconds": 600},
        {"stage": "tflite", "variant": "fp32", "params": 300_000_000, "peak_mb": 16000, "seconds": 1800},
        {"stage": "tflite", "variant": "fp16", "params": 100_000_000, "peak_mb": 5000, "seconds": 100},
    ]
    monkeypatch.setattr(sizes, "_measurements", lambda: tuple(measured))
    sizes._line.cache_clear()
    try:
        need = stage_need("tflite", ModelSize(200_000_000), "seq", "fp32", default_mb=1, default_min=1)
        assert need.peak_mb == 11000  # halfway along the line: 0.8 GB of fp32 weights
        assert need.mem_mb == 13800  # with 25 % headroom, rounded up to 100 MB
        assert need.runtime_min == 60  # 1200 s x 3
        # a short stage still gets the floor (a job queued behind others is not killed for time)
        assert stage_need("tflite", ModelSize(1000), "seq", "fp16", default_mb=1, default_min=1).runtime_min == 10
        # a variant measured at one size takes the line of every variant's largest figure, and never
        # less than its own figure from that size up
        assert (
            abs(stage_need("tflite", ModelSize(10_000_000), "seq", "fp16", default_mb=1, default_min=1).peak_mb - 1500)
            <= 1
        )
        measured[2]["peak_mb"] = 9000
        sizes._line.cache_clear()
        assert stage_need("tflite", ModelSize(100_000_000), "seq", "fp16", default_mb=1, default_min=1).peak_mb == 9000
        assert stage_need("tflite", ModelSize(90_000_000), "seq", "fp16", default_mb=1, default_min=1).peak_mb < 9000
        # a generation graph measured at one size (a 1B run's) is not asked of a tiny model: the
        # forward graph's line, floored by its own figure from that size up
        measured.append(
            {"stage": "tflite", "graph": "prefill", "variant": "fp32", "params": 10**9, "peak_mb": 90000, "seconds": 60}
        )
        sizes._line.cache_clear()
        tiny = stage_need("tflite", ModelSize(100_000_000), "prefill", "fp32", default_mb=1, default_min=1)
        assert tiny.peak_mb == 6000
        assert stage_need("tflite", ModelSize(10**9), "prefill", "fp32", default_mb=1, default_min=1).peak_mb == 90000
        # a stage measured at one size only (a peer stage of a 1B run): the rule's own figure below
        # that size, the measured one from there up
        measured.append({"stage": "genai_model", "params": 10**9, "peak_mb": 12000, "seconds": 100})
        sizes._line.cache_clear()
        assert stage_need("genai_model", ModelSize(10**8), default_mb=6000, default_min=20) == Need(6000, 20, 4800)
        assert stage_need("genai_model", ModelSize(2 * 10**9), default_mb=6000, default_min=20).mem_mb == 15000
        # three sizes that no straight line goes through: each measured size gets its own figure, a
        # smaller model less than the smallest (not a least-squares intercept above it), a larger one
        # more than the largest
        for params, peak in ((100_000_000, 1000), (300_000_000, 2000), (10**9, 2500)):
            measured.append({"stage": "savedmodel", "params": params, "peak_mb": peak, "seconds": 10})
        sizes._line.cache_clear()
        peaks = [
            stage_need("savedmodel", ModelSize(p), default_mb=1, default_min=1).peak_mb for p in (10**6, 3 * 10**8)
        ]
        assert peaks[0] < 1000 and peaks[1] == 2000, peaks
        assert stage_need("savedmodel", ModelSize(2 * 10**9), default_mb=1, default_min=1).peak_mb > 2500
        # a stage never measured, or a model of unknown size, keeps the rule's own figures
        assert stage_need("simplify_onnx", ModelSize(10), default_mb=8000, default_min=40).mem_mb == 8000
        assert stage_need("tflite", None, "seq", "fp32", default_mb=10000, default_min=20).runtime_min == 20
    finally:
        sizes._line.cache_clear()


def test_the_measured_costs_cover_every_stage_of_a_format_at_three_sizes():
    rows = json.loads(sizes.COSTS.read_text())["measurements"]
    for stage in ("export_onnx", "openvino_ir", "evaluate", "reference_logits", "prepare_model"):
        assert len({r["params"] for r in rows if r["stage"] == stage}) >= 3, stage
    for stage in ("simplify_onnx", "savedmodel", "tflite"):  # these cannot take a 1B model (2 GB)
        assert len({r["params"] for r in rows if r["stage"] == stage}) >= 3, stage


def test_single_file_formats_refuse_a_model_above_2_gb_and_say_why():
    big = ModelSize(1_236_000_000)
    why = size_limits([("tflite", "fp16"), ("savedmodel", None)], big, None)
    assert why.startswith("not applicable: the model has 1236M parameters, 4.9 GB in fp32, above the 2 GB limit")
    assert "TFLite flatbuffer" in why
    assert size_limits([("openvino_ir", None), ("export_onnx", None)], big, None) is None
    assert size_limits([("tflite", "fp32")], None, 1000) is None  # unknown size: nothing is ruled out yet


def test_a_1b_model_dry_run_names_the_formats_it_rules_out_and_plans_the_rest(tmp_path):
    arch = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32}
    arch.update(num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=2048)
    write_config(tmp_path, {"models": {"llama1b": {"source": "random", "seed": 0, "architecture": arch}}})
    # on a 64 GB machine: the 2 GB limits rule formats out, not the memory (see the next test for that)
    proc = snakemake(tmp_path, "-n", "--resources", "mem_mb=64000")
    out = proc.stdout + proc.stderr
    assert "llama1b: 1236M parameters (4.94 GB in fp32, from its architecture)" in out
    for backend in ("onnx_simplified", "tflite_fp32", "tflite_fp16", "tflite_int8"):
        assert f"llama1b: {backend} not applicable: the model has 1236M parameters" in out, backend
    plan = planned_jobs(proc.stdout)
    assert "savedmodel" not in plan and "tflite" not in plan and "simplify_onnx" not in plan
    assert "results/llama1b/seq128/onnx_int8_block" in proc.stdout  # ORT's quantiser reads the exported ONNX
    assert plan.get("openvino_ir") and plan.get("export_onnx")


def test_recorded_costs_are_those_of_stages_that_finished(tmp_path):
    """A stage that failed or was killed for memory leaves a benchmark file too; its figures measure the
    failure (a kill cuts the peak short), so recording a run's costs leaves it out."""
    from lmship.sizes import record_costs

    def stage(rule: str, stem: str, folder: str, failed: bool, peak: int) -> None:
        bench = tmp_path / "benchmarks" / rule / f"{stem}.tsv"
        bench.parent.mkdir(parents=True, exist_ok=True)
        bench.write_text(f"s\tmax_rss\n12.5\t{peak}\n")
        out = tmp_path / "results" / "m" / "seq8" / folder
        out.mkdir(parents=True)
        (out / ("failed.json" if failed else "metrics.json")).write_text(json.dumps({"peak_rss_mb": peak}))

    hf = tmp_path / "results" / "m" / "hf"
    hf.mkdir(parents=True)
    (hf / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "vocab_size": 320}))
    stage("tflite", "m_seq8_fp16", "tflite_fp16", failed=False, peak=3000)
    stage("tflite", "m_seq8_fp32", "tflite_fp32", failed=True, peak=900)
    costs = tmp_path / "costs.json"
    found = record_costs(tmp_path, "test machine", costs)
    assert [(m["stage"], m["variant"], m["peak_mb"]) for m in found] == [("tflite", "fp16", 3000)]
    assert json.loads(costs.read_text())["measurements"] == found


def test_a_1b_model_on_this_machines_memory_is_refused_before_any_job_by_its_predicted_peak(tmp_path):
    """On a machine whose memory budget is below the fitted export peak of a 1.24B model (fp32 4.9 GB;
    measured 11.4 GB at that size), ONNX is not applicable, said before any job."""
    arch = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32}
    arch.update(num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=2048)
    predicted = stage_need("export_onnx", ModelSize(1_236_000_000), default_mb=1, default_min=1).peak_mb
    budget = 8000
    assert predicted > budget, predicted
    write_config(tmp_path, {"models": {"llama1b": {"source": "random", "seed": 0, "architecture": arch}}})
    proc = snakemake(tmp_path, "-n", "--resources", f"mem_mb={budget}")
    out = proc.stdout + proc.stderr
    said = f"llama1b: onnx not applicable: export_onnx is predicted to peak at {predicted / 1000:.1f} GB"
    assert said in out, out[-3000:]
    assert "above this run's memory budget of 8.0 GB" in out


def test_an_exact_grid_stage_planned_before_the_gguf_was_read_refuses_at_once(tmp_path):
    """A pypi_gguf model's GGUF types are known only once prepare_model has fetched it, after the run was
    planned: the exact-grid stages then read them from prepare.json and refuse before re-encoding."""
    from lmship import StageError
    from lmship.backends import refuse_if_not_applicable

    prepared = tmp_path / "hf"
    prepared.mkdir()
    refuse_if_not_applicable("onnx_q4_exact", prepared)  # an older folder without prepare.json: the stage decides
    info = {"source": "pypi_gguf", "gguf_types": {"F32": 109, "Q4_K": 27, "Q5_0": 81, "Q6_K": 9, "Q8_0": 10}}
    (prepared / "prepare.json").write_text(json.dumps(info))
    for backend in ("onnx_q4_exact", "openvino_q4_exact"):
        with pytest.raises(StageError, match=r"^not applicable: .* holds no Q4_1 tensor \(109 F32, 27 Q4_K"):
            refuse_if_not_applicable(backend, prepared)
    refuse_if_not_applicable("onnx_int8_block", prepared)
    (prepared / "prepare.json").write_text(json.dumps({**info, "gguf_types": {"F32": 61, "Q4_1": 210}}))
    refuse_if_not_applicable("onnx_q4_exact", prepared)
    (prepared / "prepare.json").write_text(json.dumps({"source": "random"}))
    with pytest.raises(StageError, match="needs weights dequantised from a GGUF file"):
        refuse_if_not_applicable("openvino_q4_exact", prepared)


def test_a_random_model_takes_a_real_tokenizer_and_refuses_one_larger_than_its_vocabulary(tmp_path, tiny_model):
    """A 1B benchmark model of random weights with Llama 3's own vocabulary, so that llama.cpp's converter
    (which knows only listed pre-tokenizers) converts it; a tokenizer larger than vocab_size is refused."""
    from transformers import AutoTokenizer

    from lmship import StageError
    from lmship.prepare_model import prepare_model

    arch = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    given = AutoTokenizer.from_pretrained(tiny_model)
    out = prepare_model(
        {"source": "random", "seed": 0, "tokenizer": str(tiny_model), "architecture": {**arch, "vocab_size": 600}},
        tmp_path / "hf",
    )
    made = AutoTokenizer.from_pretrained(out)
    text = "The committee met on Tuesday."
    assert made(text)["input_ids"] == given(text)["input_ids"] and len(made) == len(given)
    assert json.loads((out / "prepare.json").read_text())["tokenizer"] == str(tiny_model)
    with pytest.raises(StageError, match=f"has {len(given)} tokens, more than the random model's vocab_size 300"):
        prepare_model(
            {"source": "random", "tokenizer": str(tiny_model), "architecture": {**arch, "vocab_size": 300}},
            tmp_path / "small",
        )
