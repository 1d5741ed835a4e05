"""The bundled evaluation text (written for this project, free to reuse)."""

from __future__ import annotations

from pathlib import Path

TEXT_PATH = Path(__file__).parent / "data" / "eval_text.txt"


def bundled_text() -> str:
    """English prose (about 1,200 words) used for perplexity and calibration."""
    return TEXT_PATH.read_text(encoding="utf-8")
