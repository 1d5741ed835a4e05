"""The fixed evaluation inputs (rule ``eval_inputs``): ``text_samples`` windows of the evaluation prose,
each the start of its own news article, then ``random_samples`` batches of seeded random token ids
(reported apart). Every backend is run on exactly these ids."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import StageError
from .cli import config_default, parser
from .corpus import read_documents, text_windows
from .files import atomic_output
from .logs import log_to

log = logging.getLogger(__name__)


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


def main(argv: list[str] | None = None) -> None:
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
