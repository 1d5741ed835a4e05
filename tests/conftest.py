"""Shared fixtures: a tiny random LlamaForCausalLM and its conversion chain, made on the fly.

The stage functions are imported and run directly here; ``test_workflow.py``
runs the same stages through Snakemake.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))
os.environ.setdefault("TQDM_DISABLE", "1")

SEQ = 24
#: The shape of SmolLM2-135M (config.json), for checks that need the real sizes without the weights.
SMOLLM2_135M_ARCH = {
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "vocab_size": 49152,
}
TINY_SPEC = {
    "source": "random",
    "seed": 0,
    "architecture": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 384,
    },
}


def fp32_bounds() -> dict[str, float]:
    """The fp32 conversion gate's logit bounds of the default config."""
    from lmship.cli import config_default

    return {
        "max_rel_diff": config_default("conversion_gate", "fp32_max_rel_logit_diff"),
        "max_mean_kld": config_default("conversion_gate", "fp32_max_mean_kld"),
    }


@pytest.fixture(scope="session")
def chain_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("chain")


@pytest.fixture(scope="session")
def tiny_model(chain_dir) -> Path:
    from lmship.prepare_model import prepare_model

    return prepare_model(TINY_SPEC, chain_dir / "hf")


@pytest.fixture(scope="session")
def eval_text(chain_dir) -> Path:
    from lmship.eval_text import eval_text

    return eval_text(chain_dir / "eval_text.txt")


@pytest.fixture(scope="session")
def eval_set(tiny_model, eval_text, chain_dir) -> dict[str, Path]:
    from lmship.eval_inputs import eval_inputs
    from lmship.reference_logits import reference_logits

    inputs = eval_inputs(
        tiny_model,
        eval_text,
        chain_dir / "eval_inputs.npz",
        seq_len=SEQ,
        batch_size=1,
        text_samples=4,
        random_samples=2,
        seed=0,
    )
    logits = reference_logits(
        tiny_model, inputs, chain_dir / "reference_logits.npy", chain_dir / "reference_logits.json"
    )
    return {
        "inputs": inputs,
        "reference": logits,
        "reference_json": chain_dir / "reference_logits.json",
        "text": eval_text,
    }


@pytest.fixture(scope="session")
def onnx_model(tiny_model, eval_set, chain_dir) -> Path:
    from lmship.export_onnx import export_onnx

    export_onnx(
        tiny_model,
        eval_set["inputs"],
        eval_set["reference"],
        chain_dir / "onnx.onnx",
        opset=18,
        min_top1=99.0,
        **fp32_bounds(),
        metrics_json=chain_dir / "export.json",
    )
    return chain_dir / "onnx.onnx"


@pytest.fixture(scope="session")
def simplified(onnx_model, eval_set, chain_dir) -> Path:
    from lmship.simplify_onnx import simplify_onnx

    simplify_onnx(
        onnx_model,
        eval_set["inputs"],
        eval_set["reference"],
        chain_dir / "onnx_simplified.onnx",
        min_top1=99.0,
        **fp32_bounds(),
        metrics_json=chain_dir / "simplify.json",
    )
    return chain_dir / "onnx_simplified.onnx"


@pytest.fixture(scope="session")
def saved_model(simplified, eval_set, chain_dir) -> Path:
    from lmship.savedmodel import savedmodel

    savedmodel(
        simplified,
        eval_set["inputs"],
        eval_set["reference"],
        chain_dir / "savedmodel",
        min_top1=99.0,
        **fp32_bounds(),
        metrics_json=chain_dir / "savedmodel.json",
    )
    return chain_dir / "savedmodel"


@pytest.fixture(scope="session")
def tflite_models(saved_model, eval_set, chain_dir) -> dict[str, dict]:
    """TFLite fp32 / fp16 / int8 with their op census; returns each stage's metrics.

    Each conversion runs in its own process through the stage's CLI, as in the workflow.
    """
    from lmship.cli import config_default
    from lmship.files import read_json

    metrics = {}
    for precision in ("fp32", "fp16", "int8"):
        cmd = [
            sys.executable,
            "-m",
            "lmship",
            "tflite",
            "--saved-model",
            str(saved_model),
            "--out-tflite",
            str(chain_dir / f"tflite_{precision}.tflite"),
            "--precision",
            precision,
            "--inputs-npz",
            str(eval_set["inputs"]),
            "--reference-npy",
            str(eval_set["reference"]),
            "--min-top1",
            "95" if precision != "int8" else "0",
            "--census-json",
            str(chain_dir / f"tflite_{precision}.ops.json"),
            "--metrics-json",
            str(chain_dir / f"tflite_{precision}.json"),
            "--log",
            str(chain_dir / f"tflite_{precision}.log"),
        ]
        if precision == "fp32":  # fp32 keeps PyTorch's logits too (the config's bounds)
            cmd += ["--max-rel-diff", str(config_default("conversion_gate", "fp32_max_rel_logit_diff"))]
            cmd += ["--max-mean-kld", str(config_default("conversion_gate", "fp32_max_mean_kld"))]
        subprocess.run(cmd, check=True, cwd=REPO / "workflow")
        metrics[precision] = read_json(chain_dir / f"tflite_{precision}.json")
    return metrics
