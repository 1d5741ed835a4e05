"""Greedy generation with the prefill / decode-step graphs, in every runtime, and its checks.

``generate(runtime, prefill, decode, host_npz, prompts, ...)`` runs the same
host loop over ONNX Runtime (``ort``), TFLite (``tflite``, through the
``serving_default`` signature runner, inputs and outputs mapped by name) or the
graphs' own PyTorch modules (``torch``, artifacts = the HF folder): prefill the
first P prompt tokens, feed any further prompt tokens through decode steps,
then decode greedily. The host owns the fixed-size K/V cache of ``max_len``
slots per layer and writes each step's new K/V into its slot
(:func:`write_kv`). :func:`torch_generate` is the reference: transformers'
model with its own KV cache, one step at a time; :func:`hf_generate` times
``model.generate``. :func:`same_text` compares token ids,
:func:`validate_graph` checks a converted graph's logits against PyTorch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import StageError
from .decode_graph import GraphIO

log = logging.getLogger(__name__)

RUNTIMES = ("torch", "ort", "tflite", "openvino", "openvino_bf16")


@dataclass
class GenerationResult:
    """Token ids and timings of greedy generation over several prompts."""

    runtime: str
    threads: int
    tokens: list[list[int]]  # generated ids per prompt (prompt excluded)
    ttft_ms: list[float]  # time to first token per prompt (prefill incl. any extra prompt steps)
    decode_ms: list[list[float]]  # per generated token after the first, per prompt
    load_s: float = 0.0
    prompt_lens: list[int] = field(default_factory=list)
    logits: list[list[np.ndarray]] | None = None  # per prompt, per generated token (when collected)

    def summary(self) -> dict:
        steps = np.array([t for per in self.decode_ms for t in per], dtype=np.float64)
        ttft = np.array(self.ttft_ms, dtype=np.float64)
        prompt_tokens = sum(self.prompt_lens)
        return {
            "runtime": self.runtime,
            "threads": self.threads,
            "prompts": len(self.tokens),
            "new_tokens": len(self.tokens[0]) if self.tokens else 0,
            "load_s": round(self.load_s, 2),
            "ttft_ms_median": round(float(np.median(ttft)), 2) if ttft.size else None,
            "decode_ms_median": round(float(np.median(steps)), 2) if steps.size else None,
            "decode_ms_p90": round(float(np.percentile(steps, 90)), 2) if steps.size else None,
            "generated_tok_s": round(1000.0 / float(np.median(steps)), 2) if steps.size else None,
            "prompt_tok_s": round(prompt_tokens / (ttft.sum() / 1000.0), 1) if ttft.size else None,
        }


def same_text(reference_tokens: list[int], tokens: list[int]) -> dict:
    """Where ``tokens`` first differs from ``reference_tokens`` and the share of positions that match.

    ``first_divergence`` is None when the sequences are equal (same length, same ids).
    """
    ref, got = [int(t) for t in reference_tokens], [int(t) for t in tokens]
    n = max(len(ref), len(got))
    first = next((i for i in range(n) if i >= len(ref) or i >= len(got) or ref[i] != got[i]), None)
    matched = sum(1 for a, b in zip(ref, got, strict=False) if a == b)
    return {
        "identical": first is None,
        "first_divergence": first,
        "matched_pct": round(100.0 * matched / len(ref), 2) if ref else 100.0,
    }


def write_kv(cache: np.ndarray, new: np.ndarray, slot: int, kv_heads: int) -> None:
    """Write a step's new K or V ``[kv_heads, head_dim]`` into ``slot`` of ``cache`` [kv_heads*S, head_dim]
    (the position itself for a full cache, the position modulo S for a sliding layer's ring)."""
    cache.reshape(kv_heads, -1, cache.shape[-1])[:, slot, :] = new


def write_prefill_kv(cache: np.ndarray, block: np.ndarray, kv_heads: int) -> None:
    """Write the prefill's K or V ``[kv_heads*P, head_dim]`` (positions 0..P-1) into ``cache``."""
    p = block.shape[0] // kv_heads
    write_positions(cache, block.reshape(kv_heads, p, cache.shape[-1]), kv_heads)


def write_positions(cache: np.ndarray, block: np.ndarray, kv_heads: int) -> None:
    """Write K or V of positions 0..n-1 (``block`` [kv_heads, n, head_dim]) into ``cache`` [kv_heads*S, head_dim]:
    position p into slot p % S, so a ring of S < n slots keeps the last S positions."""
    d, n = cache.shape[-1], block.shape[1]
    slots = cache.shape[0] // kv_heads
    first = max(0, n - slots)
    cache.reshape(kv_heads, slots, d)[:, np.arange(first, n) % slots, :] = block[:, first:, :]


# --------------------------------------------------------------------------- runners


class _Graphs:
    """Prefill and decode callables of one runtime: ``fn(dict name -> array) -> dict name -> array``."""

    def __init__(self, runtime: str, prefill: Path | None, decode: Path | None, host: dict, threads: int, run=None):
        self.runtime, self.threads, self.host = runtime, threads, host
        self.layers = int(host["layers"])
        if run is not None:  # an in-process graph (e.g. the Keras model before it is saved)
            self.prefill = run if prefill is not None else None
            self.decode = run if decode is not None else None
        elif runtime in ("ort", "tflite", "openvino", "openvino_bf16"):
            self.prefill = _open_graph(runtime, prefill, threads) if prefill else None
            self.decode = _open_graph(runtime, decode, threads) if decode else None
        elif runtime == "torch":
            self.prefill, self.decode = _torch_graphs(prefill or decode, threads, host)
            if prefill is None:
                self.prefill = None
        else:
            raise StageError(f"unknown generation runtime {runtime!r}; expected one of {RUNTIMES}")


def _open_graph(runtime: str, path: Path, threads: int):
    """The ``feeds -> outputs`` callable of the graph file ``path`` in ``runtime`` (ort, tflite, openvino[_bf16])."""
    if not Path(path).is_file():
        raise StageError(f"generation graph {path} does not exist")
    if runtime == "ort":
        return _ort_graph(path, threads)
    if runtime == "tflite":
        return _tflite_graph(path, threads)
    return _openvino_graph(path, threads, "bf16" if runtime == "openvino_bf16" else "f32")


def _ort_graph(path: Path, threads: int):
    import onnxruntime as ort

    from .runtimes import ort_session_options

    try:
        session = ort.InferenceSession(str(path), ort_session_options(threads), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise StageError(f"ONNX Runtime cannot load {path}: {type(exc).__name__}: {exc}") from exc
    run = _bound_runner(session)
    run.input_names = [i.name for i in session.get_inputs()]
    return run


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64}


def _bound_runner(session):
    """``feeds -> outputs`` over ONNX Runtime's IOBinding: inputs bound where they lie, outputs preallocated.

    An input is bound once per array object (the host's K/V cache and mask stay bound
    from step to step and are read in place), and every output is written into a
    buffer allocated once: no copy on the way in or out. The returned arrays are
    those buffers, overwritten by the next call. A graph with a dynamic output shape
    or an output type other than float / int64 runs through ``session.run``.
    """
    outputs = session.get_outputs()
    if not all(o.type in _ORT_DTYPES and all(isinstance(s, int) for s in o.shape) for o in outputs):
        names = [o.name for o in outputs]

        def run_plain(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(names, session.run(None, feeds), strict=True))

        return run_plain
    dtypes = {i.name: _ORT_DTYPES.get(i.type) for i in session.get_inputs()}
    binding = session.io_binding()
    results = {o.name: np.empty(o.shape, _ORT_DTYPES[o.type]) for o in outputs}
    for name, buf in results.items():
        binding.bind_output(name, "cpu", 0, buf.dtype, list(buf.shape), buf.ctypes.data)
    bound: dict[str, np.ndarray] = {}  # what each input is bound to, kept alive while bound

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in feeds.items():
            if bound.get(name) is value:
                continue
            if name not in dtypes:
                raise StageError(f"the graph has no input {name!r} (inputs: {sorted(dtypes)[:8]}...)")
            # a converted copy is bound anew on every call: the caller's own array may change
            array = np.ascontiguousarray(value, dtype=dtypes[name])
            binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            bound[name] = array
        session.run_with_iobinding(binding)
        return results

    run.keepalive = (session, binding, bound)
    return run


def _openvino_graph(path: Path, threads: int, precision_hint: str):
    """An OpenVINO IR (or ONNX file) compiled for the CPU; inputs are shared with the host's arrays, not copied."""
    from .openvino import compile_ir

    compiled = compile_ir(path, threads, precision_hint=precision_hint)
    request = compiled.create_infer_request()
    outs = [(o, o.get_any_name()) for o in compiled.outputs]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        got = request.infer(feeds, share_inputs=True)
        return {name: got[o] for o, name in outs}

    run.input_names = [i.get_any_name() for i in compiled.inputs]
    run.keepalive = compiled
    return run


def _tflite_graph(path: Path, threads: int):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter  # noqa: N806
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads if threads > 0 else None)
        signatures = interpreter.get_signature_list()
        if "serving_default" not in signatures:
            raise StageError(f"{path} has no serving_default signature (found {sorted(signatures)})")
        runner = interpreter.get_signature_runner("serving_default")
    except StageError:
        raise
    except Exception as exc:
        raise StageError(f"the TFLite interpreter cannot load {path}: {type(exc).__name__}: {exc}") from exc
    names = set(signatures["serving_default"]["inputs"])

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = set(feeds) ^ names
        if missing:
            raise StageError(f"{path}: signature inputs {sorted(names)[:8]}... do not match feeds {sorted(missing)}")
        return runner(**feeds)

    run.input_names = sorted(names)
    run.keepalive = interpreter
    return run


def _torch_graphs(hf_dir: Path, threads: int, host: dict):
    """The graphs' own PyTorch modules (eager) for the lengths of ``host``."""
    import torch

    from .decode_graph import graph_modules

    if threads > 0:
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    modules, io, model = graph_modules(Path(hf_dir), prompt_len=int(host["prompt_len"]), max_len=int(host["max_len"]))

    def wrap(module, graph):
        ins, outs = io.names(graph)

        def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                got = module(*[torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in ins])
            return {n: t.numpy() for n, t in zip(outs, got, strict=True)}

        run.input_names = ins
        run.keepalive = model
        return run

    return wrap(modules["prefill"], "prefill"), wrap(modules["decode"], "decode")


def load_host_tables(host_npz: Path) -> dict:
    if not Path(host_npz).is_file():
        raise StageError(f"host tables {host_npz} do not exist; write them with decode_graph.write_host_tables")
    with np.load(host_npz) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- the loop


def _check_prompt(n: int, new_tokens: int, prompt_len: int, max_len: int, *, use_prefill: bool) -> None:
    if use_prefill and n < prompt_len:
        raise StageError(
            f"a prompt of {n} tokens is shorter than the prefill graph's {prompt_len} tokens; "
            "cut prompts of at least prompt_len tokens"
        )
    if n > max_len:
        raise StageError(f"a prompt of {n} tokens is longer than the cache of max_len={max_len} slots")
    if n + new_tokens - 1 > max_len:
        raise StageError(
            f"a prompt of {n} tokens + {new_tokens} new tokens needs {n + new_tokens - 1} cache slots; "
            f"max_len is {max_len}"
        )


def _loop(
    graphs: _Graphs,
    prompt: np.ndarray,
    new_tokens: int,
    *,
    forced: list[int] | None = None,
    collect: bool = False,
    prompt_cache: list[np.ndarray] | None = None,
) -> tuple[list[int], float, list[float], list[np.ndarray]]:
    """One prompt: greedy ids, time to first token (ms), per-step decode ms, logits (if ``collect``).

    ``forced`` feeds those ids instead of the greedy ones (teacher forcing for the
    logits check). ``prompt_cache`` (K/V per layer [kv_heads, n, head_dim], from
    PyTorch) replaces the prefill graph: the decode graph is then checked alone.
    """
    host = graphs.host
    io = GraphIO.from_host(host)
    p_len, max_len, kv, d = (int(host[k]) for k in ("prompt_len", "max_len", "kv_heads", "head_dim"))
    rows, neg = {name: host[name] for name in io.table_names}, np.float32(host["mask_neg"])
    ids = np.asarray(prompt, dtype=np.int64).reshape(-1)
    n = ids.size
    use_prefill = prompt_cache is None and graphs.prefill is not None
    _check_prompt(n, new_tokens, p_len, max_len, use_prefill=use_prefill)
    names, slots = io.kv_names, io.kv_slots
    caches = [np.zeros((kv * s, d), np.float32) for s in slots]
    masks = {}
    for name, s in io.masks:
        masks[name] = np.full((1, s + 1), neg, np.float32)
        masks[name][0, -1] = 0.0
    logits_seen: list[np.ndarray] = []

    def open_slots(pos: int) -> None:  # a step at ``pos`` sees the last min(pos, S) positions of each cache
        for name, s in io.masks:
            masks[name][0, : min(pos, s)] = 0.0

    def step(token: int, pos: int) -> np.ndarray:
        open_slots(pos)
        feeds = {"token": np.array([[token]], np.int64)}
        feeds.update({name: table[pos : pos + 1] for name, table in rows.items()})
        feeds.update(masks)
        feeds.update(zip(names, caches, strict=True))
        out = graphs.decode(feeds)
        for name, cache, s in zip(names, caches, slots, strict=True):
            write_kv(cache, out["new_" + name], pos % s, kv)
        return out["logits"]

    started = time.perf_counter()
    if use_prefill:
        feeds = {"input_ids": ids[None, :p_len], **{name: table[:p_len] for name, table in rows.items()}}
        out = graphs.prefill(feeds)
        for name, cache in zip(names, caches, strict=True):
            write_prefill_kv(cache, out[name], kv)
        logits, pos = out["logits"], p_len
    elif prompt_cache is None:  # no prefill graph: the whole prompt goes through decode steps
        logits, pos = None, 0
    else:  # PyTorch's K/V of the prompt but its last token, which a decode step recomputes
        for cache, block in zip(caches, prompt_cache, strict=True):
            write_positions(cache, block[:, : n - 1], kv)
        pos = n - 1
        logits = None
    while pos < n:  # the rest of the prompt, one decode step each
        logits = step(int(ids[pos]), pos)
        pos += 1
    token = int(np.argmax(logits[-1]))
    ttft = (time.perf_counter() - started) * 1000.0
    tokens = [token]
    if collect:
        logits_seen.append(np.array(logits[-1]))
    decode_ms = []
    for i in range(1, new_tokens):
        feed = forced[i - 1] if forced is not None else token
        t0 = time.perf_counter()
        logits = step(int(feed), pos)
        token = int(np.argmax(logits[-1]))
        decode_ms.append((time.perf_counter() - t0) * 1000.0)
        pos += 1
        tokens.append(token)
        if collect:
            logits_seen.append(np.array(logits[-1]))
    return tokens, ttft, decode_ms, logits_seen


def generate(
    runtime: str,
    prefill_artifact: Path | None,
    decode_artifact: Path,
    host_npz: Path,
    prompts: list[np.ndarray],
    *,
    new_tokens: int,
    threads: int = 1,
    warmup: bool = True,
    collect_logits: bool = False,
) -> GenerationResult:
    """Greedy ``new_tokens`` per prompt with the graphs in ``runtime`` ('ort' | 'tflite' | 'torch').

    For ``torch`` both artifacts are the HF folder (the graphs' modules run eagerly).
    Prompts must hold at least P tokens (the prefill length) and, with the new
    tokens, fit into the ``max_len`` cache. With ``prefill_artifact=None`` the
    whole prompt goes through decode steps (any length >= 1; time to first token
    is then P decode steps, not one prefill). ``warmup`` runs one untimed prefill
    and decode step first.
    """
    if new_tokens < 1:
        raise StageError(f"new_tokens must be >= 1, got {new_tokens}")
    host = load_host_tables(host_npz)
    use_prefill = prefill_artifact is not None
    for prompt in prompts:
        _check_prompt(
            np.asarray(prompt).size, new_tokens, int(host["prompt_len"]), int(host["max_len"]), use_prefill=use_prefill
        )
    started = time.perf_counter()
    prefill = Path(prefill_artifact) if use_prefill else None
    graphs = _Graphs(runtime, prefill, Path(decode_artifact), host, threads)
    load_s = time.perf_counter() - started
    if warmup:
        _loop(graphs, np.asarray(prompts[0])[: int(host["prompt_len"])], 2)
    result = GenerationResult(runtime, threads, [], [], [], load_s, [], [] if collect_logits else None)
    for prompt in prompts:
        tokens, ttft, steps, logits = _loop(graphs, np.asarray(prompt), new_tokens, collect=collect_logits)
        result.tokens.append(tokens)
        result.ttft_ms.append(ttft)
        result.decode_ms.append(steps)
        result.prompt_lens.append(int(np.asarray(prompt).size))
        if collect_logits:
            result.logits.append(logits)
    return result


# --------------------------------------------------------------------------- PyTorch reference


def _load_hf(hf_dir: Path, threads: int):
    import torch
    from transformers import AutoModelForCausalLM

    if threads > 0:
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    return AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


def torch_generate(
    hf_dir: Path,
    prompts: list[np.ndarray],
    new_tokens: int,
    max_len: int,
    *,
    threads: int = 1,
    forced: list[list[int]] | None = None,
    collect_logits: bool = False,
    keep_prompt_cache: bool = False,
    warmup: bool = True,
) -> GenerationResult:
    """Reference greedy generation: transformers' model with its own KV cache, one step at a time.

    The whole prompt is one forward pass (time to first token), then one forward
    per new token with ``past_key_values``. ``keep_prompt_cache`` stores the K/V
    of every prompt position on the result (``.prompt_caches``, per layer [kv_heads, n, head_dim]).
    """
    import torch

    started = time.perf_counter()
    model = _load_hf(Path(hf_dir), threads)
    load_s = time.perf_counter() - started
    for prompt in prompts:
        n = np.asarray(prompt).size
        if n > max_len or n + new_tokens - 1 > max_len:
            raise StageError(f"a prompt of {n} tokens + {new_tokens} new tokens does not fit max_len={max_len}")
    result = GenerationResult("torch_cached", threads, [], [], [], load_s, [], [] if collect_logits else None)
    result.prompt_caches = []

    def run(prompt, forced_ids, timed=True):
        ids = torch.from_numpy(np.asarray(prompt, dtype=np.int64).reshape(1, -1))
        with torch.inference_mode():
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            logits = out.logits[0, -1]
            token = int(torch.argmax(logits))
            ttft = (time.perf_counter() - t0) * 1000.0
            past = out.past_key_values
            cache = _prompt_kv(model, ids, past) if keep_prompt_cache else None
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


def _prompt_kv(model, ids, past) -> list[np.ndarray]:
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


def hf_generate(hf_dir: Path, prompts: list[np.ndarray], new_tokens: int, *, threads: int = 1) -> GenerationResult:
    """transformers' ``model.generate`` (greedy, its KV cache): tokens and whole-call time per prompt.

    Per-token decode time is not observable from outside; ``decode_ms`` holds the
    call's time minus a separately timed prefill, spread over the new tokens.
    """
    import torch

    started = time.perf_counter()
    model = _load_hf(Path(hf_dir), threads)
    load_s = time.perf_counter() - started
    result = GenerationResult("torch_generate", threads, [], [], [], load_s, [], None)
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    with torch.inference_mode():
        warm = torch.from_numpy(np.asarray(prompts[0], dtype=np.int64).reshape(1, -1))
        model.generate(warm, max_new_tokens=2, do_sample=False)
        for prompt in prompts:
            ids = torch.from_numpy(np.asarray(prompt, dtype=np.int64).reshape(1, -1))
            t0 = time.perf_counter()
            model(input_ids=ids, use_cache=True)
            ttft = (time.perf_counter() - t0) * 1000.0
            t0 = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
            total = (time.perf_counter() - t0) * 1000.0
            result.tokens.append(out[0, ids.shape[1] :].tolist())
            result.ttft_ms.append(ttft)
            per = max(total - ttft, 0.0) / max(new_tokens - 1, 1)
            result.decode_ms.append([per] * (new_tokens - 1))
            result.prompt_lens.append(ids.shape[1])
    return result


# --------------------------------------------------------------------------- the conversion gate


def _compare(reference: list[np.ndarray], logits: list[np.ndarray]) -> dict:
    """Top-1 agreement, largest logit difference (absolute and over the reference logits' standard
    deviation) and mean KL divergence of ``logits`` against ``reference``, position by position."""
    from .quality import kl_divergence

    ref = np.stack(reference).astype(np.float64).reshape(len(reference), -1)
    got = np.stack(logits).astype(np.float64).reshape(len(logits), -1)
    scale = float(ref.std())
    if not np.isfinite(got).all():
        return {
            "positions": len(ref),
            "finite": False,
            "top1_agreement_pct": 0.0,
            "max_abs_diff": float("inf"),
            "reference_std": scale,
            "max_rel_diff": float("inf"),
            "kld_mean": float("inf"),
        }
    max_abs = float(np.abs(ref - got).max())
    return {
        "positions": len(ref),
        "finite": True,
        "top1_agreement_pct": round(100.0 * float((ref.argmax(-1) == got.argmax(-1)).mean()), 2),
        "max_abs_diff": max_abs,
        "reference_std": scale,
        "max_rel_diff": max_abs / scale if scale > 0 else float("inf"),
        "kld_mean": float(kl_divergence(ref, got).mean()),
    }


def validate_graph(
    graph: str,
    runtime: str,
    artifact: Path,
    host_npz: Path,
    hf_dir: Path,
    prompts: list[np.ndarray],
    *,
    steps: int = 8,
    min_top1: float = 99.0,
    max_abs_diff: float | None = None,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
    run=None,
    stage: str | None = None,
) -> dict:
    """Check one converted generation graph against PyTorch (transformers, its own KV cache).

    ``prefill``: logits of the last prompt position, on the first P tokens of each prompt.
    ``decode``: the prompt's K/V from PyTorch are put into the cache, then ``steps``
    decode steps are fed PyTorch's greedy tokens (teacher forcing), the host writing
    each new K/V into the cache; every step's logits are compared. Raises
    :class:`StageError` when top-1 agreement < ``min_top1`` %, the largest
    absolute logit difference exceeds ``max_abs_diff``, the largest difference over
    the reference logits' standard deviation exceeds ``max_rel_diff`` or the mean
    KL divergence exceeds ``max_mean_kld`` (nats); returns the metrics.
    ``run`` (``feeds -> outputs`` by name) replaces loading ``artifact`` in ``runtime``.
    """
    host = load_host_tables(host_npz)
    p_len, max_len = int(host["prompt_len"]), int(host["max_len"])
    artifact = Path(artifact)
    if graph == "prefill":
        cut = [np.asarray(p)[:p_len] for p in prompts]
        for p in cut:
            _check_prompt(p.size, 1, p_len, max_len, use_prefill=True)
        ref = torch_generate(hf_dir, cut, 1, max_len, collect_logits=True, warmup=False)
        graphs = _Graphs(runtime, artifact, None, host, threads=0, run=run)
        got = [_loop(graphs, p, 1, collect=True)[3][0] for p in cut]
        reference = [r[0] for r in ref.logits]
    elif graph == "decode":
        ref = torch_generate(
            hf_dir, prompts, steps + 1, max_len, collect_logits=True, keep_prompt_cache=True, warmup=False
        )
        graphs = _Graphs(runtime, None, artifact, host, threads=0, run=run)
        got, reference = [], []
        for k, prompt in enumerate(prompts):
            seen = _loop(
                graphs,
                np.asarray(prompt),
                steps + 1,
                forced=ref.tokens[k][:-1],
                collect=True,
                prompt_cache=ref.prompt_caches[k],
            )[3]
            got += seen
            reference += ref.logits[k]
    else:
        raise StageError(f"unknown generation graph {graph!r}; expected 'prefill' or 'decode'")
    from .quality import figures, logit_failures

    metrics = _compare(reference, got)
    log.info("%s graph %s (%s) vs PyTorch: %s", graph, artifact, runtime, metrics)
    where = f"{stage + ': ' if stage else ''}{graph} graph {artifact} ({runtime})"
    if not metrics["finite"]:
        raise StageError(f"{where} produced NaN or infinite logits")
    failures = []
    if metrics["top1_agreement_pct"] < min_top1:
        failures.append(
            f"agrees with PyTorch on the top-1 token for only {metrics['top1_agreement_pct']:.2f}% of "
            f"{metrics['positions']} positions (required >= {min_top1}%)"
        )
    failures += logit_failures(metrics, max_abs_diff=max_abs_diff, max_rel_diff=max_rel_diff, max_mean_kld=max_mean_kld)
    if failures:
        raise StageError(
            f"{where} {'; '.join(failures)}; {figures(metrics)}. The graph or its cache handling changed the "
            "model's answers."
        )
    return metrics


def prompts_from_text(hf_dir: Path, text: str, *, count: int, length: int) -> list[np.ndarray]:
    """Cut ``count`` prompts of ``length`` tokens from ``text`` (consecutive, non-overlapping)."""
    from transformers import AutoTokenizer

    ids = np.asarray(AutoTokenizer.from_pretrained(hf_dir)(text)["input_ids"], dtype=np.int64)
    if ids.size < count * length:
        raise StageError(f"the text has {ids.size} tokens; {count} prompts of {length} need {count * length}")
    return [ids[i * length : (i + 1) * length] for i in range(count)]


def graph_prompts(inputs_npz: Path, count: int) -> list[np.ndarray]:
    """The first ``count`` prose windows of the evaluation set (``eval_inputs``) as prompts."""
    from .evalset import load_inputs

    input_ids, is_text = load_inputs(inputs_npz)
    text = [np.asarray(s).reshape(-1) for s, t in zip(input_ids, is_text, strict=True) if t]
    if len(text) < count:
        raise StageError(
            f"{inputs_npz} holds {len(text)} prose windows; {count} prompts need at least as many "
            f"(raise eval.text_samples or lower generation.prompts)"
        )
    return text[:count]
