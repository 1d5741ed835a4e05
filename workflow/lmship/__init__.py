"""lmship: stage functions of the conversion / benchmark workflow.

Each stage is a typed function (``Path`` in, ``Path`` out) that can be imported
and tested without Snakemake; ``workflow/scripts/*.py`` are thin adapters and
``python -m lmship <stage> --help`` runs a stage alone.
"""

__version__ = "0.1.0"


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on; the message says which."""


class ThreadsRefusedError(StageError):
    """A runtime cannot run this artifact at the thread count asked for (a known crash of its release,
    say); it runs at ``min_threads`` and more. A measurement of speed at that count is a failed row with
    this reason; a measurement of quality, which does not depend on the thread count, runs at
    ``min_threads`` and says so."""

    def __init__(self, message: str, min_threads: int):
        super().__init__(message)
        self.min_threads = min_threads
