"""PyTorch (transformers, eager): the reference, its dynamic int8 and bf16-autocast variants.

``open``: an HF folder in fp32 (``sdpa`` attention, ``inference_mode``), or the folder that
:func:`lmship.quantize_pytorch.quantize_pytorch` wrote (dynamic int8 Linear layers, found by its
state file), with ``autocast="bf16"`` the fp32 weights under CPU bf16 autocast. ``generate``:
transformers' model with its own KV cache, one step at a time (the generation reference).
Threads: ``torch.set_num_threads`` with one inter-op thread (:func:`set_threads`, the one place
that sets them), read back with ``torch.get_num_threads()``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np

from .. import StageError
from . import GenerationResult, Session, require_bf16

NAME = "pytorch"
#: The package this runtime imports (checked before any job: a runtime not installed is not applicable).
IMPORTS = "torch"
DISTRIBUTION = "torch"
GENERATES = "own"
AUTOCAST = (None, "bf16")


def version() -> str:
    import torch

    return torch.__version__


def set_threads(threads: int) -> int:
    """Set PyTorch's intra-op threads (0: keep its default) and one inter-op thread; return those in effect."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # already set in this process
            torch.set_num_interop_threads(1)
    return torch.get_num_threads()


#: The state dict of a quantised folder (lmship.quantize_pytorch writes it beside the model's config).
STATE_FILE = "model_int8.pt"


def int8_linear(model):
    """``model`` with every ``nn.Linear`` dynamically quantised to int8 (``quantize_dynamic``, qint8)."""
    import torch
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def load_quantized(folder: Path):
    """Rebuild the quantised model of a folder that :func:`lmship.quantize_pytorch.quantize_pytorch` wrote."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    model = int8_linear(AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval())
    state = torch.load(Path(folder) / STATE_FILE, weights_only=False)
    model.load_state_dict(state)
    return model.eval()


def load(hf_dir: Path, threads: int = 0):
    """The fp32 model of an HF folder (or the int8 one of a quantised folder), in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    set_threads(threads)
    if (Path(hf_dir) / STATE_FILE).is_file():
        return load_quantized(Path(hf_dir))
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def open(artifact: Path, threads: int, *, autocast: str | None = None) -> Session:
    import torch

    if autocast not in AUTOCAST:
        raise StageError(f"unknown PyTorch autocast {autocast!r}; expected one of {AUTOCAST}")
    if autocast == "bf16":
        require_bf16(f"PyTorch bf16 autocast of {artifact}")
    in_effect = set_threads(threads)
    model = load(artifact)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def run(input_ids: np.ndarray) -> np.ndarray:
        ids = torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64))
        with torch.inference_mode(), cast:
            out = model(input_ids=ids, use_cache=False)
        return out.logits.float().numpy()

    label = NAME if autocast is None else f"{NAME}-{autocast}-autocast"
    return Session(label, torch.__version__, threads, run, in_effect, keepalive=model)


def generate(
    hf_dir: Path,
    prompts: list[np.ndarray],
    new_tokens: int,
    max_len: int | None = None,
    *,
    threads: int = 1,
    forced: list[list[int]] | None = None,
    collect_logits: bool = False,
    keep_prompt_cache: bool = False,
    warmup: bool = True,
) -> GenerationResult:
    """Reference greedy generation: transformers' model with its own KV cache, one step at a time.

    The whole prompt is one forward pass (time to first token), then one forward per new token
    with ``past_key_values``. ``forced`` feeds those ids instead of the greedy ones (teacher
    forcing); ``keep_prompt_cache`` stores the K/V of every prompt position on the result
    (``.prompt_caches``, per layer [kv_heads, n, head_dim]).
    """
    import torch

    started = time.perf_counter()
    model = load(Path(hf_dir), threads)
    load_s = time.perf_counter() - started
    for prompt in prompts:
        n = np.asarray(prompt).size
        if max_len is not None and n + new_tokens - 1 > max_len:
            raise StageError(f"a prompt of {n} tokens + {new_tokens} new tokens does not fit max_len={max_len}")
    result = GenerationResult(NAME, threads, [], [], [], load_s, [], [] if collect_logits else None)
    result.threads_in_effect = torch.get_num_threads()
    result.prompt_caches = []

    def run(prompt, forced_ids):
        ids = torch.from_numpy(np.asarray(prompt, dtype=np.int64).reshape(1, -1))
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            logits = out.logits[0, -1]
            token = int(torch.argmax(logits))
            ttft = (time.perf_counter() - t0) * 1000.0
            past = out.past_key_values
            cache = prompt_kv(model, ids, past) if keep_prompt_cache else None
            tokens, steps, seen = [token], [], [logits.float().numpy().copy()] if collect_logits else []
            for i in range(1, new_tokens):
                feed = forced_ids[i - 1] if forced_ids is not None else token
                t0 = time.perf_counter()
                out = model(input_ids=torch.tensor([[feed]]), past_key_values=past, use_cache=True)
                logits = out.logits[0, -1]
                token = int(torch.argmax(logits))
                steps.append((time.perf_counter() - t0) * 1000.0)
                past = out.past_key_values
                tokens.append(token)
                if collect_logits:
                    seen.append(logits.float().numpy().copy())
        return tokens, ttft, steps, seen, cache

    if warmup:
        run(prompts[0], None)
    for k, prompt in enumerate(prompts):
        tokens, ttft, steps, seen, cache = run(prompt, forced[k] if forced else None)
        result.tokens.append(tokens)
        result.ttft_ms.append(ttft)
        result.decode_ms.append(steps)
        result.prompt_lens.append(int(np.asarray(prompt).size))
        result.prompt_caches.append(cache)
        if collect_logits:
            result.logits.append(seen)
    return result


def prompt_kv(model, ids, past) -> list[np.ndarray]:
    """K and V of every prompt position, per layer [kv_heads, n, head_dim], from the cache ``past`` after the
    prompt ``ids``. A sliding-window layer's own cache keeps only its window: then the prompt runs once more
    into a cache of full layers (transformers' masks still apply each layer's window)."""
    import torch
    from transformers import DynamicCache

    n = ids.shape[1]
    if any(layer.keys.shape[-2] < n for layer in past.layers):
        with torch.inference_mode():
            past = model(input_ids=ids, past_key_values=DynamicCache(), use_cache=True).past_key_values
    out = []
    for layer in past.layers:
        out += [layer.keys[0].float().numpy().copy(), layer.values[0].float().numpy().copy()]
    return out
