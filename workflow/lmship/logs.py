"""Logging set-up shared by every stage.

TensorFlow, TFLite and ONNX Runtime write from C++ straight to file descriptor
2, past Python's ``sys.stderr``; :func:`log_to` therefore redirects the
descriptors themselves, so a rule's ``log:`` file gets everything.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("lmship")


def _configure_logging(stream) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


@contextmanager
def log_to(path: Path | str | None) -> Iterator[None]:
    """Send stdout, stderr (fd 1 and 2) and Python logging to ``path``.

    With ``path=None`` logging goes to the current stderr. On an exception the
    traceback is written to the log before it propagates, so the log names
    the cause even when the caller's stderr is lost.
    """
    if path is None:
        _configure_logging(sys.stderr)
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with fds_redirected(fd, 1, 2):
        os.close(fd)
        _configure_logging(sys.stderr)
        # Where the stage runs: the container image (Dockerfile sets LMSHIP_IMAGE) or none.
        log.info("python %s, image %s", sys.executable, os.environ.get("LMSHIP_IMAGE", "none"))
        started = time.monotonic()
        try:
            yield
        except BaseException as exc:
            log.exception("stage failed after %.1f s: %s", time.monotonic() - started, exc)
            raise
        else:
            log.info("stage finished in %.1f s", time.monotonic() - started)


@contextmanager
def fds_redirected(target: int, *fds: int) -> Iterator[None]:
    """Point the file descriptors ``fds`` (1 = stdout, 2 = stderr) at ``target``; restore them afterwards.

    This is what catches C++ output (TensorFlow, TFLite, ONNX Runtime), which
    bypasses Python's ``sys.stdout`` / ``sys.stderr``.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(fd) for fd in fds]
    for fd in fds:
        os.dup2(target, fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip(fds, saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)


@contextmanager
def captured_stderr(*fds: int) -> Iterator[list[str]]:
    """Capture what is written to file descriptor 2 (or ``fds``), pass it on afterwards, and expose it as text.

    The list yielded holds the text once the block has finished.
    """
    import tempfile

    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as buf:
        try:
            with fds_redirected(buf.fileno(), *(fds or (2,))):
                yield captured
        finally:
            buf.seek(0)
            text = buf.read().decode(errors="replace")
            sys.stderr.write(text)
            sys.stderr.flush()
            captured.append(text)


def first_error_line(text: str) -> str | None:
    """The first line of ``text`` that reports an error (ANSI colours removed), or None."""
    import re

    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        if "ERROR" in line or "Error:" in line:
            return line.replace("ERROR:", "").strip() or None
    return None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
