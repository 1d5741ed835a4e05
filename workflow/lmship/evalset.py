"""The evaluation set's shared reader: the token windows that ``eval_inputs`` wrote
(see :mod:`lmship.eval_inputs`, :mod:`lmship.eval_text`, :mod:`lmship.reference_logits`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_inputs(npz: Path) -> tuple[np.ndarray, np.ndarray]:
    """The ``input_ids`` ``[n, batch, seq]`` and ``is_text`` ``[n]`` of an ``eval_inputs`` file."""
    with np.load(npz) as data:
        return data["input_ids"], data["is_text"]
