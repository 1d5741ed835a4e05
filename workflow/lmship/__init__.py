"""lmship: stage functions of the conversion / benchmark workflow.

Each stage is a typed function (``Path`` in, ``Path`` out) that can be imported
and tested without Snakemake; ``workflow/scripts/*.py`` are thin adapters and
``python -m lmship <stage> --help`` runs a stage alone.
"""

__version__ = "0.1.0"


class StageError(RuntimeError):
    """A stage failed for a reason the user can act on; the message says which."""
