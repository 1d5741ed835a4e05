"""The evaluation prose: 300 English news articles that a pinned PyPI wheel ships.

gensim 4.4.0 ships the Lee corpus (``lee_background.cor``: 300 Australian
Broadcasting Corporation news articles, one per line, ~60,000 words) as test
data. It is read straight out of the downloaded wheel, so nothing is fetched
beyond the package index and every machine gets byte-identical text (checked
against its sha256). The project's own bundled text (``text.py``) stays for
tokenizer training of random test models.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import zipfile
from pathlib import Path

from . import StageError
from .files import atomic_output

log = logging.getLogger(__name__)

PACKAGE = "gensim==4.4.0"
MEMBER = "gensim/test/test_data/lee_background.cor"
SHA256 = "5d78d6dafd953bbf65797bef09a9ffb9ec430583381be705f8fd460000f370fb"
#: Articles in the file: an upper bound on the text windows an evaluation set can have.
DOCUMENTS = 300


def fetch_prose(out_txt: Path) -> Path:
    """Download the pinned wheel, check the article file's sha256 and write it (one article a line)."""
    from .prepare_model import download_wheel

    with tempfile.TemporaryDirectory(prefix="lmship-corpus-") as tmp:
        wheel = download_wheel(PACKAGE, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            if MEMBER not in zf.namelist():
                raise StageError(f"{wheel.name} has no member {MEMBER!r}: is {PACKAGE} the pinned release?")
            data = zf.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        raise StageError(f"{MEMBER} in {wheel.name} has sha256 {digest}, expected {SHA256}: not the pinned text")
    with atomic_output(Path(out_txt)) as tmp_out:
        Path(tmp_out).write_bytes(data)
    log.info("evaluation prose %s: %d articles from %s", out_txt, len(read_documents(out_txt)), wheel.name)
    return Path(out_txt)


def read_documents(txt: Path) -> list[str]:
    """The articles of a file written by :func:`fetch_prose`, in file order."""
    return [line.strip() for line in Path(txt).read_text(encoding="utf-8").splitlines() if line.strip()]


def text_windows(token_lists: list[list[int]], seq_len: int, count: int) -> tuple[list[list[int]], list[int]]:
    """The first ``seq_len`` tokens of the first ``count`` articles that are at least that long.

    Every window starts at its article's beginning, so each position sees real
    context. Returns the windows and the indices of the articles they come from;
    raises :class:`StageError` when too few articles are long enough.
    """
    windows, used = [], []
    for i, ids in enumerate(token_lists):
        if len(ids) >= seq_len:
            windows.append(list(ids[:seq_len]))
            used.append(i)
            if len(windows) == count:
                return windows, used
    raise StageError(
        f"the evaluation prose has only {len(windows)} articles of at least {seq_len} tokens, "
        f"{count} text windows asked (eval.text_samples): lower eval.text_samples or the sequence length"
    )
