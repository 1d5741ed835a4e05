"""llama.cpp (GGUF files, through llama-cpp-python): a peer runtime with its own cache and loop.

``open``: every position's logits (``Llama(logits_all=True)``, ``eval(ids)``, ``scores``) as
``float32 [batch, seq, vocab]``; the ids go in as they are: no BOS is added, as the PyTorch
reference gets none. ``generate``: greedy decoding over llama.cpp's context (``eval`` of the
prompt, then one ``eval`` per token, argmax of the last logits). Threads: ``n_threads`` (decode)
and ``n_threads_batch`` (prompt, forward) are both set and read back from the context
(``llama_n_threads``, ``llama_n_threads_batch``). The artifact is made by :mod:`lmship.gguf`.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import StageError
from . import GenerationResult, Session, greedy_over

log = logging.getLogger(__name__)

NAME = "llamacpp"
#: The package this runtime imports (checked before any job: a runtime not installed is not applicable).
#: The lock that installs it, apart from envs/requirements.lock.
LOCK = "envs/peers.lock"
IMPORTS = "llama_cpp"
GENERATES = "own"
DISTRIBUTION = "llama-cpp-python"
#: Architectures converted and run through llama.cpp here (tests/test_peers.py, tiny random models).
VERIFIED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma3ForCausalLM",
    "GPT2LMHeadModel",
)


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError as exc:
        raise StageError(
            f"llama-cpp-python is not installed ({exc}); install envs/peers.lock (see docs/environments.md)"
        ) from exc
    return llama_cpp


def version() -> str:
    """The installed llama-cpp-python version."""
    return _llama_cpp().__version__


def system_info() -> str:
    """llama.cpp's own line of the CPU features it was built for and uses (``llama_print_system_info``)."""
    return _llama_cpp().llama_print_system_info().decode(errors="replace").strip()


def not_applicable(config: dict) -> str | None:
    """Why llama.cpp cannot take a model of this config.json here (an architecture not verified), or None."""
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if arch not in VERIFIED_ARCHITECTURES:
        return (
            f"not applicable: {arch or 'this model'} is not among the architectures converted and run through "
            f"llama.cpp here ({', '.join(VERIFIED_ARCHITECTURES)})"
        )
    return None


#: llama-cpp-python releases whose llama.cpp crashes (SIGSEGV in ``ggml_backend_amx_mul_mat``) on the first
#: quantised matmul on a CPU with AMX, when it is built there from source (the AMX kernels are compiled in
#: for the native CPU): seen with 0.3.36 on an Intel Xeon with AMX for Q8_0, Q4_1 and Q4_K_M; F32 runs.
#: There the model is loaded without llama.cpp's extra buffer types (its AMX and repacked layouts), so
#: every GGUF runs on the AVX-512 kernels; elsewhere nothing changes.
AMX_SIGSEGV = ("0.3.36",)


@contextmanager
def _model_params(llama_cpp):
    """llama.cpp's default model parameters, without extra buffer types where :data:`AMX_SIGSEGV` applies."""
    from ..host import cpu_flags

    if not (version().startswith(AMX_SIGSEGV) and "amx_int8" in cpu_flags()):
        yield
        return
    import llama_cpp.llama as high_level

    default = high_level.llama_cpp.llama_model_default_params

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    log.warning("llama.cpp %s on a CPU with AMX: loading without its AMX / repacked weight layouts", version())
    high_level.llama_cpp.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        high_level.llama_cpp.llama_model_default_params = default


def open_llama(gguf_path: Path, threads: int, *, n_ctx: int, logits_all: bool):
    """``llama_cpp.Llama`` on ``gguf_path`` with ``threads`` for both decode and batch; returns it and
    the (n_threads, n_threads_batch) its context reports."""
    llama_cpp = _llama_cpp()
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise StageError(f"GGUF file {gguf_path} does not exist")
    count = threads if threads > 0 else None
    try:
        with _model_params(llama_cpp):
            llm = llama_cpp.Llama(
                str(gguf_path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                n_threads=count,
                n_threads_batch=count,
                logits_all=logits_all,
                verbose=False,
            )
    except Exception as exc:  # llama-cpp-python raises ValueError / RuntimeError with the C message
        raise StageError(f"llama.cpp cannot load {gguf_path}: {type(exc).__name__}: {exc}") from exc
    ctx = llm._ctx.ctx
    return llm, (int(llama_cpp.llama_n_threads(ctx)), int(llama_cpp.llama_n_threads_batch(ctx)))


def open(gguf_path: Path, threads: int, *, n_ctx: int = 512) -> Session:
    """A :class:`lmship.runtimes.Session`: ``run(ids [batch, seq])`` -> logits ``[batch, seq, vocab]``.

    Each row is evaluated from an empty KV cache (``eval`` drops every cached position from
    ``n_tokens`` on, and ``reset`` sets that to 0); ``scores`` hold one row of logits per position.
    ``threads_in_effect`` is the context's ``n_threads_batch`` (a forward pass is one batch).
    """
    llm, (n_threads, n_batch_threads) = open_llama(gguf_path, threads, n_ctx=n_ctx, logits_all=True)

    def run(input_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] > n_ctx:
            raise StageError(f"input ids must be [batch, seq <= {n_ctx}], got shape {ids.shape}")
        out = np.empty((*ids.shape, llm.n_vocab()), np.float32)
        for b, row in enumerate(ids):
            llm.reset()
            llm.eval(row.tolist())
            out[b] = llm.scores[: row.size]
        return out

    session = Session(NAME, version(), threads, run, n_batch_threads, keepalive=llm)
    session.threads_decode = n_threads
    return session


def _last_logits(llm) -> np.ndarray:
    """The last evaluated position's logits, read in place from the context (no copy)."""
    ptr = llm._ctx.get_logits_ith(-1)
    return np.ctypeslib.as_array(ptr, shape=(llm.n_vocab(),))


def generate(
    gguf_path: Path,
    prompts: list[np.ndarray],
    new_tokens: int,
    max_len: int | None = None,
    *,
    threads: int = 1,
    warmup: bool = True,
) -> GenerationResult:
    """Greedy ``new_tokens`` per prompt; time to first token = ``eval(prompt)`` + argmax, then one
    ``eval([token])`` + argmax per ``decode_ms`` entry. The KV cache starts empty for each prompt,
    and the context is sized to the longest prompt (``max_len`` is not needed)."""
    if new_tokens < 1:
        raise StageError(f"new_tokens must be >= 1, got {new_tokens}")
    longest = max(int(np.asarray(p).size) for p in prompts)
    started = time.perf_counter()
    llm, in_effect = open_llama(gguf_path, threads, n_ctx=longest + new_tokens, logits_all=False)
    load_s = time.perf_counter() - started
    if threads > 0 and in_effect != (threads, threads):
        raise StageError(f"asked llama.cpp for {threads} threads, its context runs {in_effect} (decode, batch)")

    def one(prompt: np.ndarray, count: int) -> tuple[list[int], float, list[float]]:
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(np.asarray(prompt, dtype=np.int64).reshape(-1).tolist())
        tokens = [int(np.argmax(_last_logits(llm)))]
        ttft = (time.perf_counter() - t0) * 1000.0
        steps = []
        while len(tokens) < count:
            t0 = time.perf_counter()
            llm.eval([tokens[-1]])
            tokens.append(int(np.argmax(_last_logits(llm))))
            steps.append((time.perf_counter() - t0) * 1000.0)
        return tokens, ttft, steps

    return greedy_over(
        NAME, prompts, new_tokens, one, threads=threads, threads_in_effect=in_effect, load_s=load_s, warmup=warmup
    )
