"""ONNX Runtime GenAI: a peer runtime with its own cache and generation loop over its model builder's files.

``open``: token ids through its runtime (``og.Generator.append_tokens`` on a fresh generator),
the logits of every position, ``float32 [batch, seq, vocab]``. ``generate``: its greedy loop
(``do_sample=False``): ``append_tokens`` of the prompt and the first ``generate_next_token`` give
the time to first token, each further ``generate_next_token`` one decode step. Threads:
``model.decoder.session_options.intra_op_num_threads`` (and 1 inter-op thread) laid over
``genai_config.json`` with ``og.Config.overlay``; the runtime has no getter, so the threads its
session pool starts are counted (``intra_op_num_threads - 1`` workers plus the calling thread).
The artifact folder is made by :mod:`lmship.genai_model` (the package's own model builder).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .. import StageError
from . import GenerationResult, Session, greedy_over, os_threads

NAME = "ort_genai"
#: The package this runtime imports (checked before any job: a runtime not installed is not applicable).
#: The lock that installs it, apart from envs/requirements.lock.
LOCK = "envs/peers.lock"
IMPORTS = "onnxruntime_genai"
GENERATES = "own"
#: The runtime opens the artifact folder (genai_config.json and its ONNX files), not one file.
OPENS_FOLDER = True
DISTRIBUTION = "onnxruntime-genai"
#: ``architectures[0]`` values the 0.10 builder has a model class for (``builder.create_model``).
BUILDER_ARCHITECTURES = (
    "ChatGLMModel",
    "Ernie4_5_ForCausalLM",
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "GptOssForCausalLM",
    "GraniteForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "NemotronForCausalLM",
    "OlmoForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "SmolLM3ForCausalLM",
)
#: Families the builder has a class for but that do not come out right with transformers 5 here
#: (measured on tiny random models; see tests/test_peers.py).
BUILDER_BROKEN: dict[str, str] = {}


def version() -> str:
    """The installed onnxruntime-genai version (raises StageError when it is absent)."""
    return _og().__version__


def _og():
    try:
        import onnxruntime_genai as og
    except ImportError as exc:
        raise StageError(
            f"onnxruntime-genai is not installed ({exc}); install envs/peers.lock (see docs/environments.md)"
        ) from exc
    return og


def not_applicable(config: dict) -> str | None:
    """Why the builder cannot make this model (``config``: its config.json), or None when it can."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in BUILDER_ARCHITECTURES:
        return (
            f"not applicable: the ONNX Runtime GenAI 0.10 model builder has no class for {arch or 'this model'} "
            f"(model_type {config.get('model_type')!r}); it builds {', '.join(BUILDER_ARCHITECTURES)}"
        )
    if arch in BUILDER_BROKEN:
        return f"not applicable: {BUILDER_BROKEN[arch]}"
    rope = config.get("rope_parameters") or {}
    long_context = config.get("original_max_position_embeddings", config.get("max_position_embeddings"))
    if arch == "Phi3ForCausalLM" and long_context != config.get("max_position_embeddings"):
        return (
            "not applicable: Phi-3 with LongRoPE (max_position_embeddings != original_max_position_embeddings): "
            "the ONNX Runtime GenAI 0.10 builder reads its factors from rope_scaling['type'], which "
            "transformers 5 configs spell rope_parameters['rope_type']"
        )
    if rope and "rope_theta" not in rope and any(isinstance(v, dict) for v in rope.values()):
        return (
            "not applicable: the model has one RoPE setting per layer type (rope_parameters "
            f"{sorted(rope)}), which the ONNX Runtime GenAI 0.10 builder cannot read from a transformers 5 config"
        )
    return None


def open_model(model_dir: Path, threads: int):
    """``og.Model`` of ``model_dir`` with ``threads`` intra-op threads; returns (model, threads in effect)."""
    og = _og()
    model_dir = Path(model_dir)
    if not (model_dir / "genai_config.json").is_file():
        raise StageError(f"{model_dir} is not an ONNX Runtime GenAI model folder (no genai_config.json)")
    try:
        config = og.Config(str(model_dir))
        if threads > 0:
            options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        before = os_threads()
        model = og.Model(config)
        after = os_threads()
    except Exception as exc:  # the runtime raises plain RuntimeError / OSError with its message
        raise StageError(f"ONNX Runtime GenAI cannot load {model_dir}: {type(exc).__name__}: {exc}") from exc
    in_effect = 1 + after - before if before is not None and after is not None else None
    return model, in_effect


def open(model_dir: Path, threads: int) -> Session:
    """A :class:`lmship.runtimes.Session` whose ``run(ids)`` returns every position's logits.

    Each call starts a fresh ``og.Generator`` (KV buffer of exactly the input's length) and
    appends the ids: one forward pass of the whole sequence through the runtime's own session.
    """
    og = _og()
    model, in_effect = open_model(model_dir, threads)

    def run(input_ids: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(input_ids, dtype=np.int32)
        if ids.ndim != 2:
            raise StageError(f"input ids must be [batch, seq], got shape {ids.shape}")
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=int(ids.shape[1]), batch_size=int(ids.shape[0]), do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        logits = np.asarray(generator.get_output("logits"), dtype=np.float32)
        if logits.shape[:2] != ids.shape:
            raise StageError(
                f"{model_dir} returned logits of shape {logits.shape} for ids {ids.shape}: "
                "its LM head keeps only the last position"
            )
        return logits

    return Session(NAME, og.__version__, threads, run, in_effect, keepalive=model)


def generate(
    model_dir: Path,
    prompts: list[np.ndarray],
    new_tokens: int,
    max_len: int | None = None,
    *,
    threads: int = 1,
    warmup: bool = True,
) -> GenerationResult:
    """Greedy ``new_tokens`` per prompt through the runtime's own loop; timings like our generators'
    (``max_len`` is not needed: each generator is sized to its prompt and new tokens).

    Time to first token: ``append_tokens(prompt)`` (the prefill) and the first
    ``generate_next_token`` (which picks the token from the prefill's logits). Each further
    ``generate_next_token`` (one decode step and its argmax) is one ``decode_ms`` entry.
    """
    og = _og()
    if new_tokens < 1:
        raise StageError(f"new_tokens must be >= 1, got {new_tokens}")
    started = time.perf_counter()
    model, in_effect = open_model(model_dir, threads)
    load_s = time.perf_counter() - started
    if in_effect is not None and threads > 0 and in_effect != threads:
        raise StageError(f"asked ONNX Runtime GenAI for {threads} intra-op threads, it started {in_effect}")

    def one(prompt: np.ndarray, count: int) -> tuple[list[int], float, list[float]]:
        ids = np.asarray(prompt, dtype=np.int32).reshape(1, -1)
        total = ids.shape[1] + count
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=total, min_length=total, batch_size=1)
        generator = og.Generator(model, params)
        t0 = time.perf_counter()
        generator.append_tokens(ids)
        generator.generate_next_token()
        tokens = [int(generator.get_next_tokens()[0])]
        ttft = (time.perf_counter() - t0) * 1000.0
        steps = []
        while len(tokens) < count:
            t0 = time.perf_counter()
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            steps.append((time.perf_counter() - t0) * 1000.0)
        return tokens, ttft, steps

    return greedy_over(
        NAME, prompts, new_tokens, one, threads=threads, threads_in_effect=in_effect, load_s=load_s, warmup=warmup
    )
