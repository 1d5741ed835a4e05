"""ONNX Runtime GenAI's model builder: the ``genai_model`` stage (rule ``genai_model``).

:func:`genai_model` writes one artifact folder per variant (``results/{model}/ort_genai_<variant>/``):
what ``python -m onnxruntime_genai.models.builder -i HF_DIR -o OUT -p fp32|int4 -e cpu`` makes of
the prepared Hugging Face folder (``fp32``; ``int4``: MatMulNBits blocks of 32 with int8
activations, accuracy level 4; ``int4_acc1``: the same weights with fp32 activations, level 1),
repaired where the 0.10 builder misreads a transformers 5 folder (:func:`builder_input`,
:func:`fix_genai_config`) and its rotary tables checked against transformers' own
(:func:`check_rotary_tables`). Running it is the runtime's part (:mod:`lmship.runtimes.ort_genai`).

Why the builder needs help (0.10.0 with transformers 5.23): transformers 5 keeps the RoPE base only
in ``config.rope_parameters["rope_theta"]`` (a ``rope_theta`` key in config.json is moved there on
load), while the builder reads ``config.rope_theta`` and, finding no such attribute, falls back to
``rope_embedding_base`` and then to its own default base. A model whose base differs (SmolLM2's
does) got cos/sin tables for the wrong base, and its evaluation showed it (a broken tier, where the
fixed input is lossless). :func:`builder_input` hands the builder a copy of the folder whose
config.json also carries ``rope_embedding_base``, the one spelling it reads that transformers leaves
alone.
Its ``genai_config.json`` has ``null`` for ``do_sample`` / ``temperature`` / ``top_k`` /
``top_p`` (transformers 5 configs have those attributes set to None), which its runtime refuses.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import StageError
from .files import atomic_output, linked_copy, size_bytes, write_json
from .runtimes.ort_genai import DISTRIBUTION, not_applicable, version

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int4")
#: ``int4_accuracy_level``: 1 = fp32 activations, 4 = int8 activations (MatMulNBits).
ACCURACY_LEVELS = (1, 2, 3, 4)
#: Search fields the 0.10 builder may write as null; its runtime wants a value or nothing.
_SEARCH_FIELDS = ("do_sample", "temperature", "top_k", "top_p")


# --------------------------------------------------------------------------- making the artifact


def builder_input(hf_dir: Path, folder: Path) -> Path:
    """The folder the builder reads: ``hf_dir``'s files linked, config.json with ``rope_embedding_base``.

    The builder takes the RoPE base from ``config.rope_theta``, which transformers 5 configs do
    not have (the base lives in ``rope_parameters``); its one other spelling,
    ``rope_embedding_base``, is an unknown key to transformers and so stays an attribute.
    """
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope and "rope_theta" not in config:
        config["rope_embedding_base"] = rope["rope_theta"]
    if "partial_rotary_factor" in rope and "partial_rotary_factor" not in config:
        config["partial_rotary_factor"] = rope["partial_rotary_factor"]
    return linked_copy(hf_dir, folder, config)


def fix_genai_config(model_dir: Path) -> dict:
    """Drop the ``null`` search fields the builder wrote into ``genai_config.json``; return what was dropped."""
    path = Path(model_dir) / "genai_config.json"
    config = json.loads(path.read_text())
    search = config.get("search", {})
    dropped = {k: None for k in _SEARCH_FIELDS if k in search and search[k] is None}
    for key in dropped:
        del search[key]
    path.write_text(json.dumps(config, indent=4) + "\n")
    return dropped


def build(
    hf_dir: Path,
    out_dir: Path,
    *,
    precision: str = "fp32",
    accuracy_level: int = 4,
    block_size: int = 32,
    symmetric: bool = True,
    timeout_s: float = 3600.0,
) -> dict:
    """Build ``hf_dir`` with the ONNX Runtime GenAI model builder into ``out_dir``; return its metrics.

    ``precision`` fp32, or int4 (MatMulNBits, blocks of ``block_size``, ``int4_accuracy_level``
    ``accuracy_level``: 4 = int8 activations, 1 = fp32; ``symmetric`` False: a uint4 zero point per
    block, the builder's ``int4_is_symmetric=false``). The builder runs in its own process; its
    output is written next to ``out_dir`` and moved into place only when complete and checked.
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if precision not in PRECISIONS:
        raise StageError(f"unknown ORT GenAI precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "int4" and accuracy_level not in ACCURACY_LEVELS:
        raise StageError(f"int4_accuracy_level must be one of {ACCURACY_LEVELS}, got {accuracy_level}")
    config = json.loads((hf_dir / "config.json").read_text())
    reason = not_applicable(config)
    if reason:
        raise StageError(f"{reason} (the model in {hf_dir})")  # begins "not applicable:": a row, not retried
    og_version = version()
    started = time.monotonic()
    with atomic_output(out_dir) as tmp:
        work = tmp.parent / f".{tmp.name}.work"
        shutil.rmtree(work, ignore_errors=True)
        try:
            source = builder_input(hf_dir, work / "input")
            cmd = [
                sys.executable, "-m", "onnxruntime_genai.models.builder",
                "-i", str(source), "-o", str(tmp), "-p", precision, "-e", "cpu", "-c", str(work / "cache"),
            ]  # fmt: skip
            if precision == "int4":
                cmd += ["--extra_options", f"int4_accuracy_level={accuracy_level}", f"int4_block_size={block_size}"]
                cmd.append(f"int4_is_symmetric={'true' if symmetric else 'false'}")
            log.info("running %s", " ".join(cmd))
            env = {**os.environ, "TQDM_DISABLE": "1"}
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
            if proc.returncode != 0 or not (tmp / "genai_config.json").is_file():
                raise StageError(
                    f"the ONNX Runtime GenAI {og_version} model builder failed on {hf_dir} "
                    f"(exit {proc.returncode}): {_last_error(proc.stdout + proc.stderr)}"
                )
        finally:
            shutil.rmtree(work, ignore_errors=True)
        dropped = fix_genai_config(tmp)
        rotary = check_rotary_tables(tmp, hf_dir)
    metrics = {
        "artifact": str(out_dir),
        "builder": f"{DISTRIBUTION} {og_version}",
        "precision": precision,
        "int4_accuracy_level": accuracy_level if precision == "int4" else None,
        "int4_block_size": block_size if precision == "int4" else None,
        "int4_is_symmetric": symmetric if precision == "int4" else None,
        "genai_config_nulls_dropped": sorted(dropped),
        "rope_base_given": config.get("rope_parameters", {}).get("rope_theta"),
        "rotary_tables_max_abs_diff": rotary,
        "size_mb": round(size_bytes(out_dir) / 1e6, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    return metrics


def _last_error(text: str, lines: int = 6) -> str:
    """The last meaningful lines of a failed tool's output (progress bars dropped)."""
    kept = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    return " | ".join(kept[-lines:]) or "no output"


def _initializer(model_dir: Path, name: str) -> np.ndarray | None:
    """One initializer of the builder's ``model.onnx`` (external data read directly), or None."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(Path(model_dir) / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        if tensor.name != name:
            continue
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(tensor)
        info = {e.key: e.value for e in tensor.external_data}
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        with open(Path(model_dir) / info["location"], "rb") as f:
            f.seek(int(info.get("offset", 0)))
            raw = f.read(int(info["length"]))
        return np.frombuffer(raw, dtype=dtype).reshape(tuple(tensor.dims))
    return None


def check_rotary_tables(model_dir: Path, hf_dir: Path, positions: int = 512) -> float | None:
    """Compare the builder's ``cos_cache`` with cos(position x inv_freq) from transformers' RoPE init.

    Raises StageError when they differ by more than 1e-3 on the first ``positions`` positions;
    returns the largest difference (None when the graph has no ``cos_cache`` to check).
    """
    cos = _initializer(model_dir, "cos_cache")
    if cos is None:
        return None
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf_config = AutoConfig.from_pretrained(hf_dir)
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", "default")
    if rope_type == "default":
        base = float(rope["rope_theta"])
        dim = 2 * cos.shape[-1]
        inv_freq = 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        scaling = 1.0
    elif rope_type in ROPE_INIT_FUNCTIONS:
        inv, scaling = ROPE_INIT_FUNCTIONS[rope_type](hf_config, "cpu")
        inv_freq = inv.double().numpy()
    else:
        return None
    n = min(positions, cos.shape[0])
    expected = np.cos(np.arange(n)[:, None] * inv_freq[None, : cos.shape[-1]]) * scaling
    diff = float(np.abs(expected - cos[:n].astype(np.float64)).max())
    if diff > 1e-3:
        raise StageError(
            f"the ORT GenAI builder's rotary table cos_cache in {model_dir} differs from the model's RoPE "
            f"({rope_type}, base {rope.get('rope_theta')}) by up to {diff:.3g}: it read another base or scaling"
        )
    return diff


# --------------------------------------------------------------------------- running it


#: The ``variant`` wildcard of the rule: builder precision and int4 accuracy level; ``q4_exact`` is
#: the builder's fp32 model with its GGUF-grid weights re-encoded losslessly (:func:`genai_model`).
VARIANTS = {"fp32": ("fp32", 4), "int4": ("int4", 4), "int4_acc1": ("int4", 1), "q4_exact": ("fp32", 4)}


def genai_model(hf_dir: Path, out_dir: Path, *, variant: str) -> dict:
    """Write the artifact folder ``out_dir`` of builder ``variant`` (:data:`VARIANTS`) for ``hf_dir``."""
    if variant not in VARIANTS:
        raise StageError(f"unknown ORT GenAI variant {variant!r}; expected one of {tuple(VARIANTS)}")
    precision, level = VARIANTS[variant]
    out_dir = Path(out_dir)
    if variant != "q4_exact":
        metrics = build(hf_dir, out_dir, precision=precision, accuracy_level=level, symmetric=False)
    else:
        # The builder's graph (GroupQueryAttention, its fused rotary and norms, its KV cache) is kept;
        # its weights on the checkpoint's Q4_1 grid become MatMulNBits with the fp32 block-minimum
        # correction, a Q8_0 embedding GatherBlockQuantized and a Q8_0 head two 4-bit halves, as the
        # decode steps run it: the checkpoint's own codes, compute in fp32, proven bit for bit.
        from .exact_grid import reencode_file

        with atomic_output(out_dir) as tmp:
            fp32 = tmp / "fp32"
            metrics = build(hf_dir, fp32, precision=precision)
            for f in fp32.iterdir():  # genai_config.json, the tokenizer: everything but the graph
                if not f.name.startswith("model.onnx"):
                    f.replace(tmp / f.name)
            grid = reencode_file(
                fp32 / "model.onnx", tmp / "model.onnx", decodes=True, backend="ort_genai_q4_exact", source=hf_dir
            )
            shutil.rmtree(fp32)
        metrics = {**metrics, "artifact": str(out_dir), "exact_grid": grid}
        metrics["size_mb"] = round(size_bytes(out_dir) / 1e6, 1)
    write_json(out_dir / "metrics.json", {**metrics, "variant": variant})
    return metrics
