"""The fixed evaluation inputs (``eval_inputs``) and the PyTorch fp32 reference logits (``reference_logits``).

The input set is deterministic: ``text_samples`` batches cut from the bundled
English text (so perplexity means something) followed by ``random_samples``
batches of seeded random token ids. Every backend is run on exactly these ids.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import StageError
from .cli import config_default, parser
from .files import atomic_output, stage_metrics
from .logs import log_to
from .metrics import perplexity
from .text import bundled_text

log = logging.getLogger(__name__)


def eval_inputs(
    hf_dir: Path,
    out_npz: Path,
    *,
    seq_len: int,
    batch_size: int,
    text_samples: int,
    random_samples: int,
    seed: int,
) -> Path:
    """Tokenise the bundled text into ``[n, batch, seq]`` windows, add seeded random ids.

    Writes ``input_ids`` (int64, ``[n, batch, seq_len]``) and ``is_text``
    (bool, ``[n]``) to ``out_npz``.
    """
    from transformers import AutoConfig, AutoTokenizer

    if text_samples + random_samples < 1:
        raise StageError("the evaluation set is empty: text_samples + random_samples must be >= 1")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    vocab = AutoConfig.from_pretrained(hf_dir).vocab_size
    ids = np.asarray(tokenizer(bundled_text(), add_special_tokens=False)["input_ids"], dtype=np.int64)
    needed = text_samples * batch_size * seq_len
    repeats = int(np.ceil(needed / max(len(ids), 1)))
    if repeats > 1:
        log.warning("bundled text has %d tokens, %d needed: the text is repeated %d times", len(ids), needed, repeats)
        ids = np.tile(ids, repeats)
    text = ids[:needed].reshape(text_samples, batch_size, seq_len)
    rng = np.random.default_rng(seed)
    rand = rng.integers(0, vocab, size=(random_samples, batch_size, seq_len), dtype=np.int64)
    input_ids = np.concatenate([text, rand], axis=0)
    if input_ids.max() >= vocab:
        raise StageError(f"tokenizer produced id {input_ids.max()} >= model vocab_size {vocab}")
    is_text = np.array([True] * text_samples + [False] * random_samples)
    with atomic_output(Path(out_npz)) as tmp, open(tmp, "wb") as f:
        np.savez(f, input_ids=input_ids, is_text=is_text, text_repeats=np.int64(repeats))
    log.info("eval inputs %s: %d text + %d random samples of %s", out_npz, text_samples, random_samples, text.shape[1:])
    return Path(out_npz)


def load_inputs(npz: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(npz) as data:
        return data["input_ids"], data["is_text"]


def reference_logits(hf_dir: Path, inputs_npz: Path, out_npy: Path, metrics_json: Path | None = None) -> Path:
    """Run PyTorch fp32 (eager, no grad) on every input sample; save logits ``[n, batch, seq, vocab]``."""
    from .evaluate import run_eval_set
    from .runtimes import open_backend

    started = time.monotonic()
    input_ids, is_text = load_inputs(inputs_npz)
    session = open_backend("pytorch", Path(hf_dir), threads=0)
    logits = run_eval_set(session.run, input_ids).astype(np.float32)
    with atomic_output(Path(out_npy)) as tmp, open(tmp, "wb") as f:
        np.save(f, logits)
    stage_metrics(
        metrics_json,
        out_npy,
        started,
        shape=list(logits.shape),
        perplexity_text=perplexity(logits, input_ids, is_text),
        runtime=session.runtime,
        runtime_version=session.version,
    )
    log.info("reference logits %s %s", out_npy, logits.shape)
    return Path(out_npy)


def main_eval_inputs(argv: list[str] | None = None) -> None:
    p = parser("eval_inputs", eval_inputs.__doc__)
    p.add_argument("--model", type=Path, required=True)
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
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        reference_logits(args.model, args.inputs, args.out, args.metrics)
