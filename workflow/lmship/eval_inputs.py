"""The fixed evaluation inputs (rule ``eval_inputs``): ``text_samples`` windows of the evaluation prose,
each the start of its own news article, then ``random_samples`` batches of seeded random token ids
(reported apart). Every backend is run on exactly these ids."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import StageError
from .cli import command
from .corpus import read_documents, text_windows
from .files import atomic_output

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


#: ``python -m lmship eval_inputs``: its options are the function's parameters.
main = command(
    eval_inputs,
    config={
        "batch_size": ("batch_size",),
        "text_samples": ("eval", "text_samples"),
        "random_samples": ("eval", "random_samples"),
        "seed": ("eval", "seed"),
    },
)
