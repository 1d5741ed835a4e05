"""Greedy generation with the prefill / decode-step graphs, in every runtime, and its checks.

``generate(runtime, prefill, decode, host_npz, prompts, ...)`` runs the same
host loop over any runtime that runs graphs (:mod:`lmship.runtimes`: ONNX Runtime,
LiteRT through its signature runner, OpenVINO; inputs and outputs by name) or the
graphs' own PyTorch modules (``pytorch``, artifacts = the HF folder): prefill the
first P prompt tokens, feed any further prompt tokens through decode steps,
then decode greedily. The host owns the fixed-size K/V cache of ``max_len``
slots per layer and writes each step's new K/V into its slot
(:func:`write_kv`). The reference is transformers' model with its own KV cache
(:func:`lmship.runtimes.pytorch.generate`). :func:`same_text` compares token ids,
:func:`validate_graph` checks a converted graph's logits against PyTorch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import StageError
from .decode_graph import GraphIO
from .runtimes import GenerationResult, open_graph, pytorch

log = logging.getLogger(__name__)


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
    """Prefill and decode callables of one runtime: ``fn(dict name -> array) -> dict name -> array``.

    ``runtime`` is one that runs graphs (:mod:`lmship.runtimes`), or ``pytorch``: the graphs' own
    modules, eagerly (artifacts = the HF folder). ``options`` go to the runtime (a precision hint).
    """

    def __init__(
        self, runtime: str, prefill: Path | None, decode: Path | None, host: dict, threads: int, run=None, **options
    ):
        self.runtime, self.threads, self.host = runtime, threads, host
        self.layers = int(host["layers"])
        if run is not None:  # an in-process graph (e.g. the Keras model before it is saved)
            self.prefill = run if prefill is not None else None
            self.decode = run if decode is not None else None
        elif runtime == "pytorch":
            self.prefill, self.decode = _torch_graphs(prefill or decode, threads, host)
            if prefill is None:
                self.prefill = None
        else:
            self.prefill = open_graph(runtime, prefill, threads, **options) if prefill else None
            self.decode = open_graph(runtime, decode, threads, **options) if decode else None


def _torch_graphs(hf_dir: Path, threads: int, host: dict):
    """The graphs' own PyTorch modules (eager) for the lengths of ``host``."""
    import torch

    from .decode_graph import graph_modules

    pytorch.set_threads(threads)
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
        raise StageError(f"host tables {host_npz} do not exist; write them with host_tables.host_tables")
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
    **options,
) -> GenerationResult:
    """Greedy ``new_tokens`` per prompt with the graphs in ``runtime`` (``options``: the runtime's, e.g.
    OpenVINO's precision hint).

    For ``pytorch`` both artifacts are the HF folder (the graphs' modules run eagerly).
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
    graphs = _Graphs(runtime, prefill, Path(decode_artifact), host, threads, **options)
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


# --------------------------------------------------------------------------- the conversion gate


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
        ref = pytorch.generate(hf_dir, cut, 1, max_len, collect_logits=True, warmup=False)
        graphs = _Graphs(runtime, artifact, None, host, threads=0, run=run)
        got = [_loop(graphs, p, 1, collect=True)[3][0] for p in cut]
        reference = [r[0] for r in ref.logits]
    elif graph == "decode":
        ref = pytorch.generate(
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
    from .quality import compare_logits, figures, logit_failures

    metrics = compare_logits(reference, got)
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
