"""Bad input is rejected before any job runs, with a message naming the problem and the fix."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from workflow_helpers import snakemake, tiny_config, write_config

from lmship import StageError
from lmship.configcheck import describe_errors


def _rejected(workdir: Path, config: dict) -> str:
    """Dry-run the workflow with ``config``; assert it fails before any job; return its message."""
    write_config(workdir, config)
    proc = snakemake(workdir, "-n", check=False, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "Job stats" not in out  # no DAG was built, so nothing could run
    assert not (workdir / "results").exists()
    return out


BAD_CONFIGS = {
    "misspelled key": (
        {"benchmark": {"threads": [1], "repeat": 5}},
        ["benchmark.repeat", "did you mean 'repeats'"],
    ),
    "unknown top-level key": ({"seq_len": 128}, ["unknown key 'seq_len'", "did you mean 'seq_lens'"]),
    "wrong type": ({"seq_lens": "128"}, ["seq_lens = '128'", "is not of type 'array'"]),
    "zero repeats": ({"benchmark": {"repeats": 0}}, ["benchmark.repeats = 0", "minimum of 1"]),
    "negative threads": ({"benchmark": {"threads": [-1]}}, ["benchmark.threads[0] = -1", "minimum of 1"]),
    "zero sequence length": ({"seq_lens": [0]}, ["seq_lens[0] = 0", "minimum of 2"]),
    "unknown backend": ({"backends": ["pytorch", "tensorrt"]}, ["backends[1] = 'tensorrt'", "choose one of"]),
    "misspelled tier limit": (
        {"quality_tiers": {"lossless": {"min_top1": 99, "max_mean_kld": 0.001, "max_ppl_change_pct": 1}}},
        ["unknown key 'quality_tiers.lossless.min_top1'", "did you mean 'min_top1_pct'"],
    ),
    "tier named broken": (
        {"quality_tiers": {"broken": {"min_top1_pct": 0, "max_mean_kld": 9, "max_ppl_change_pct": 99}}},
        ["quality_tiers: name 'broken' is not allowed", "the tier of formats that meet no tier"],
    ),
    "zero warm-up": ({"benchmark": {"warmup": 0}}, ["benchmark.warmup = 0", "minimum of 1"]),
    "eval set larger than the prose": (
        {"eval": {"text_samples": 301}},
        ["eval.text_samples = 301", "maximum of 300", "300 news"],
    ),
    "empty model list": ({"models": {}}, ["models", "should be non-empty"]),
    "model name not a file name": (
        {"models": {"my model/v1": {"source": "random"}}},
        ["'my model/v1'", "Model names become folder names"],
    ),
    "unknown source": ({"models": {"m": {"source": "ftp"}}}, ["models.m.source = 'ftp'", "local"]),
    "local without path": ({"models": {"m": {"source": "local"}}}, ["models.m", "'path' is a required property"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_is_named(case):
    override, expected = BAD_CONFIGS[case]
    config = {**tiny_config(), **override}
    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    import yaml

    text = "\n".join(describe_errors(config, yaml.safe_load(schema.read_text())))
    for fragment in expected:
        assert fragment in text, (fragment, text)


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    config = {**tiny_config(), "benchmark": {"threads": [0], "repeats": 0}}
    out = _rejected(tmp_path, config)
    assert "benchmark.repeats = 0" in out and "benchmark.threads[0] = 0" in out
    assert "config.schema.yaml" in out  # where every key is documented


def test_misspelled_key_from_the_command_line(tmp_path):
    write_config(tmp_path, tiny_config())
    proc = snakemake(tmp_path, "-n", "--config", "bakends=[onnx]", check=False)
    assert proc.returncode != 0
    assert "did you mean 'backends'" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        ("missing", "does not exist"),
        ("empty", "is empty"),
        ("no_config", "lacks config.json"),
        ("no_weights", "lacks weights"),
        ("no_tokenizer", "tokenizer"),
    ],
)
def test_bad_local_folder_is_named(tmp_path, setup, expected):
    folder = tmp_path / "smollm_local_model"
    if setup != "missing":
        folder.mkdir()
    files = {"config.json": '{"architectures": ["LlamaForCausalLM"]}', "model.safetensors": "x", "tokenizer.json": "{}"}
    drop = {"no_config": "config.json", "no_weights": "model.safetensors", "no_tokenizer": "tokenizer.json"}
    if setup not in ("missing", "empty"):
        for name, text in files.items():
            if name != drop[setup]:
                (folder / name).write_text(text)
    config = tiny_config(models={"mine": {"source": "local", "path": str(folder)}})
    out = _rejected(tmp_path / "wd", config)
    assert "model 'mine'" in out and str(folder) in out and expected in out


def test_non_causal_architecture_is_named(tmp_path):
    folder = tmp_path / "bert"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["BertForMaskedLM"], "model_type": "bert"}')
    (folder / "model.safetensors").write_text("x")
    (folder / "tokenizer.json").write_text("{}")
    out = _rejected(tmp_path / "wd", tiny_config(models={"bert": {"source": "local", "path": str(folder)}}))
    assert "BertForMaskedLM" in out and "not a causal" in out


def test_unreachable_hub_fails_fast(tmp_path, monkeypatch):
    """No hub here: the id is rejected in seconds, with the local-folder way out."""
    config = tiny_config(models={"smollm": {"source": "hub", "id": "HuggingFaceTB/SmolLM-135M"}})
    write_config(tmp_path, config)
    started = time.monotonic()
    proc = snakemake(tmp_path, "-n", check=False, timeout=120)
    elapsed = time.monotonic() - started
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "HuggingFaceTB/SmolLM-135M" in out and "source: local" in out
    assert elapsed < 60, f"took {elapsed:.0f} s"


def test_hub_check_unit(monkeypatch, tmp_path):
    from lmship import checks

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    with pytest.raises(StageError, match="cannot reach"):
        checks.check_hub_reachable("org/model", timeout=3)
    assert time.monotonic() - started < 10
    # a model already in the local cache needs no network
    snap = tmp_path / "models--org--model" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    checks.check_hub_reachable("org/model", timeout=3)


def test_truncated_safetensors_is_named(tmp_path):
    from lmship.prepare_model import prepare_model

    folder = prepare_model({"source": "random", "seed": 1}, tmp_path / "src")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(StageError, match=r"model\.safetensors.*(truncated|corrupt)"):
        prepare_model({"source": "local", "path": str(folder)}, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_onnx_is_named(tmp_path, onnx_model, eval_set):
    from lmship.simplify_onnx import simplify_onnx

    broken = tmp_path / "model.onnx"
    broken.write_bytes(onnx_model.read_bytes()[:5000])
    with pytest.raises(StageError, match=r"model\.onnx is not a readable ONNX model"):
        simplify_onnx(broken, eval_set["inputs"], eval_set["reference"], tmp_path / "s.onnx", min_top1=99)
    assert not (tmp_path / "s.onnx").exists()


SEMANTIC_CASES = {
    "model named like a workflow output": (
        {"models": {"summary.csv": {"source": "random", "seed": 0}}},
        ["'summary.csv' collides with the workflow's own output results/summary.csv"],
    ),
    "hidden size the heads do not divide": (
        {"models": {"m": {"source": "random", "architecture": {"hidden_size": 30, "num_attention_heads": 4}}}},
        ["models.m.architecture: hidden_size 30 is not divisible by num_attention_heads 4", "e.g. 32"],
    ),
    "heads the KV heads do not divide": (
        {
            "models": {
                "m": {
                    "source": "random",
                    "architecture": {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3},
                }
            }
        },
        ["num_attention_heads 4 is not divisible by num_key_value_heads 3"],
    ),
    "random tokenizer that does not exist": (
        {"models": {"m": {"source": "random", "tokenizer": "no/such/tokenizer"}}},
        ["models.m.tokenizer: no/such/tokenizer does not exist", "tokenizer.json or a .gguf file"],
    ),
    "tokenizer of a model that has its own": (
        {"models": {"m": {"source": "hub", "id": "a/b", "tokenizer": "x"}}},
        ["models.m.tokenizer: only a random model takes a tokenizer"],
    ),
    "misspelled onnx2tf option": (
        {"savedmodel": {"onnx2tf": {"disable_strict_mod": True}}},
        ["savedmodel.onnx2tf.disable_strict_mod", "did you mean 'disable_strict_mode'"],
    ),
}


@pytest.mark.parametrize("case", list(SEMANTIC_CASES))
def test_values_the_schema_accepts_but_cannot_work(case):
    from lmship.configcheck import ConfigError, check_config

    override, expected = SEMANTIC_CASES[case]
    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    with pytest.raises(ConfigError) as err:
        check_config({**tiny_config(), **override}, schema)
    for fragment in expected:
        assert fragment in str(err.value), (fragment, str(err.value))


def test_model_named_like_an_output_stops_before_the_dag(tmp_path):
    out = _rejected(tmp_path, {**tiny_config(), "models": {"summary.csv": {"source": "random", "seed": 0}}})
    assert "collides with the workflow's own output" in out
    assert "Traceback" not in out


@pytest.mark.parametrize(
    ("generation", "expected"),
    [
        (
            {"prompt_tokens": 8, "max_len": 12, "new_tokens": 8},
            ["8 + new_tokens 8 - 1 = 15", "raise max_len to at least 15"],
        ),
        ({"prompts": 3}, ["generation: prompts 3 exceeds eval.text_samples 2"]),
        ({"max_len": 1}, ["generation.max_len = 1", "minimum of 2"]),
    ],
)
def test_generation_lengths_that_cannot_work_are_named(generation, expected):
    from lmship.configcheck import ConfigError, check_config

    config = tiny_config()
    config["generation"] = {**config["generation"], **generation}
    schema = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    with pytest.raises(ConfigError) as err:
        check_config(config, schema)
    for fragment in expected:
        assert fragment in str(err.value), (fragment, str(err.value))
