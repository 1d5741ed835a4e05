"""What became of a format: it ran, one of its stages failed, or it does not apply to the model.

Every record a stage writes says which: the accuracy JSON has ``status`` (``ok``
or ``failed``), the timing and generation CSV rows have a ``status`` column. A
failed record names the stage that failed (``failed_at``, its rule name), the
reason in one line and the path of that stage's log, and carries no figures. A
format that does not apply (decided before any job runs: no bf16 on this CPU,
an exact grid for weights not from a GGUF file, a size limit) has no record at
all; the workflow passes its reason along (``skipped``) and the reports list it
as ``not applicable``. A stage that can only find out by reading the model (no
weight on the grid it re-encodes, a config its builder cannot express) fails
with a reason that starts ``not applicable``: the reports list that format as
not applicable too (:func:`settled`), and the next run does not retry it.
Records written before the status existed count as ``ok``.
"""

from __future__ import annotations

import pandas as pd

from .records import NOT_APPLICABLE, found_not_applicable

OK = "ok"
FAILED = "failed"
#: What a failed record says besides its status.
FAILURE_FIELDS = ("failed_at", "reason", "log")


def with_status(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with a ``status`` column (``ok`` where it is missing or empty) and the failure columns as text."""
    rows = rows.copy()
    if "status" not in rows:
        rows["status"] = OK
    rows["status"] = rows["status"].fillna(OK).astype(str).str.strip().replace("", OK)
    for column in FAILURE_FIELDS:
        rows[column] = rows[column].fillna("").astype(str) if column in rows else ""
    return rows


def settled(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` whose failure a stage found to be ``not applicable: ...`` as not-applicable rows (no stage, no log)."""
    rows = rows.copy()
    found = (rows["status"] == FAILED) & rows["reason"].map(found_not_applicable)
    rows.loc[found, "status"] = NOT_APPLICABLE
    if "tier" in rows:
        rows.loc[found, "tier"] = NOT_APPLICABLE
    for column in ("failed_at", "log"):
        if column in rows and found.any():
            rows[column] = rows[column].astype(object)
            rows.loc[found, column] = ""
    return rows


def one_line(text: object) -> str:
    """The first non-empty line of ``text``, stripped (empty for a missing value)."""
    if text is None or (isinstance(text, float) and pd.isna(text)):
        return ""
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def failure_text(failed_at: str, reason: str) -> str:
    """``failed at <stage>: <reason>`` in one line (several stages joined with ``; ``, as :func:`merged` writes)."""
    stages = [s for s in str(failed_at).split("; ") if s]
    reasons = [r for r in str(reason).split("; ") if r]
    if len(stages) == len(reasons) and len(stages) > 1:
        return "; ".join(f"failed at {s}: {one_line(r)}" for s, r in zip(stages, reasons, strict=True))
    return f"failed at {failed_at or 'an unnamed stage'}: {one_line(reason) or 'no reason recorded'}"


def merged(*failures: dict[str, str]) -> dict[str, str]:
    """One failure record from several (the accuracy's and the timing's): distinct ones joined with ``; ``."""
    seen: list[tuple[str, str, str]] = []
    for f in failures:
        key = tuple(one_line(f.get(k, "")) for k in FAILURE_FIELDS)
        if any(key) and key not in seen:
            seen.append(key)
    return {k: "; ".join(s[i] for s in seen) for i, k in enumerate(FAILURE_FIELDS)}


def md_cell(text: object) -> str:
    """``text`` in one line, safe inside a Markdown table cell."""
    return one_line(text).replace("|", "\\|")


class Footnotes:
    """Numbered Markdown footnotes of one document, one per distinct text."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        """The marker of ``text`` (``[^n]``), numbered on first use."""
        if text not in self.texts:
            self.texts.append(text)
        return f"[^{self.texts.index(text) + 1}]"

    def lines(self) -> list[str]:
        """The footnotes' definitions, to end the document with."""
        return [f"[^{i}]: {text}" for i, text in enumerate(self.texts, 1)]


def failure_cell(failed_at: str, reason: str, log: str, notes: Footnotes) -> str:
    """A Markdown table cell for a failed record: where and why in bold, its log as a footnote."""
    logs = [p for p in str(log).split("; ") if p]
    mark = notes.mark("log: " + ", ".join(f"`{p}`" for p in logs)) if logs else ""
    return f"**{md_cell(failure_text(failed_at, reason))}** {mark}".rstrip()
