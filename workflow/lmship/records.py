"""What a conversion stage leaves behind: its artifact folder, or the record of why it has none.

Every format's stages write one folder each (``results/{model}/{graph}{seq}/<name>/``): the
artifact (``model.onnx``, ``model.tflite``, ``model.xml`` + ``.bin``, a SavedModel, ...) with its
``metrics.json``, or only a ``failed.json`` saying at which stage and why the format failed. So one
failed format never costs the user the whole answer: the stages after it see the record, pass it
on instead of running, and the summary, the plots and the generation table show the format as a
row ``failed at <stage>: <reason>``. The folder is written atomically either way
(:func:`lmship.files.atomic_output`): never a half-written artifact.

:func:`run_stage` runs a stage's work in a child process. A Python exception there (a gate that
refuses the output, a converter that crashes) becomes the record; so does a child killed by
SIGKILL, which is what the kernel does to a process that runs out of memory: the record then says
so, with the child's peak RSS and the memory the job declared. An interrupted run (Ctrl-C,
SIGTERM, a killed job) records nothing, so the stage simply runs again. The next run retries every
recorded failure: at the end of a run the workflow names every failure (:func:`failure_lines`)
and removes its record (:func:`forget`), so the next run's plan holds exactly those stages.

Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import shutil
import signal
import sys
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

from .files import atomic_output, write_json

log = logging.getLogger(__name__)

FAILED = "failed.json"
#: How the reason of a stage that finds its format does not apply to the model begins.
NOT_APPLICABLE = "not applicable"
#: Signals that end a stage because the run was stopped (not a failure of the format): nothing is recorded.
INTERRUPTIONS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)
METRICS = "metrics.json"
#: The file a runtime opens in an artifact folder, by the extensions the formats use (first match).
ARTIFACT_NAMES = ("model.onnx", "model.tflite", "model.xml", "model.gguf")
_REASON_CHARS = 400


def found_not_applicable(reason: object) -> bool:
    """Whether a failure ``reason`` is the stage's finding that its format does not apply to the model
    (``not applicable: ...``, e.g. no weight on the grid it re-encodes): a rerun would find the same,
    so it is not retried, and the reports list the format as not applicable."""
    return one_line(str(reason or "")).startswith(NOT_APPLICABLE)


def failure(folder: Path | str) -> dict | None:
    """The failure record in ``folder`` (None when the folder holds an artifact, or is not a record folder)."""
    path = Path(folder) / FAILED
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def first_failure(folders: Iterable[Path | str]) -> dict | None:
    """The failure record of the first of ``folders`` that holds one."""
    for folder in folders:
        record = failure(folder)
        if record is not None:
            return record
    return None


def artifact_in(folder: Path | str) -> Path:
    """The file a runtime opens in an artifact folder (``model.onnx``, ...), or the folder itself
    (a SavedModel, the prepared Hugging Face folder)."""
    folder = Path(folder)
    for name in ARTIFACT_NAMES:
        if (folder / name).is_file():
            return folder / name
    return folder


def metrics_of(folder: Path | str) -> Path | None:
    """The stage's metrics JSON in an artifact folder, if it wrote one."""
    path = Path(folder) / METRICS
    return path if path.is_file() else None


def one_line(text: str) -> str:
    """The first non-empty line of ``text``, cut to a readable length."""
    line = next((s.strip() for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= _REASON_CHARS else line[: _REASON_CHARS - 3] + "..."


def _memory_note(peak_mb: float, mem_mb: int | None) -> str:
    from .host import total_memory_mb

    declared = f"declared mem_mb {mem_mb}" if mem_mb else "no mem_mb declared"
    total = total_memory_mb()
    machine = f", {total} MB on this machine" if total else ""
    return f"peak RSS {peak_mb:.0f} MB ({declared}{machine})"


def run_stage(
    stage: str,
    out_dir: Path,
    work: Callable[[Path], object],
    *,
    inputs: Iterable[Path | str] = (),
    log_path: Path | str | None = None,
    mem_mb: int | None = None,
) -> dict | None:
    """Make the artifact folder ``out_dir`` with ``work(folder)``, or record why it could not be made.

    ``inputs``: the artifact folders the stage reads; if one holds a failure record, that record is
    passed on (``failed_at`` stays the stage that failed first) and ``work`` does not run. Otherwise
    ``work`` runs in a forked child process and fills the folder it is given. Returns the failure
    record, or None on success. ``mem_mb``: what the job declared, named when the child is killed.
    """
    out_dir = Path(out_dir)
    upstream = first_failure(inputs)
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        if upstream is not None:
            log.warning("%s: not run, its input failed at %s: %s", stage, upstream["failed_at"], upstream["reason"])
            record = upstream
        else:
            record = attempt(work, stage=stage, log_path=log_path, mem_mb=mem_mb, folder=tmp)
            if record is None:
                _settle_paths(tmp, out_dir)
                return None
            for entry in tmp.iterdir():  # what the failed work left: never part of the record
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        write_json(tmp / FAILED, record)
    return record


def attempt(
    work: Callable[[Path], object],
    *,
    stage: str,
    log_path: Path | str | None = None,
    mem_mb: int | None = None,
    folder: Path | None = None,
) -> dict | None:
    """Run ``work(folder)`` in a forked child process; None on success, else the failure record of ``stage``.

    Without ``folder`` the work gets an empty scratch folder (for a stage whose output is not a
    folder: the caller writes its own output from the record).
    """
    if folder is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix=f"lmship-{stage}-") as scratch:
            return attempt(work, stage=stage, log_path=log_path, mem_mb=mem_mb, folder=Path(scratch))
    problem = _in_child(work, folder)
    peak = problem.pop("peak_rss_mb")
    if not problem:
        log.info("%s: %s", stage, _memory_note(peak, mem_mb))  # what a size's stage costs are read from
        return None
    if problem.pop("killed", False):
        reason = f"killed by SIGKILL, most likely out of memory: {_memory_note(peak, mem_mb)}"
        problem.update(killed_for_memory=True, mem_mb=mem_mb)
    else:
        reason = problem.pop("reason")
    log.error("%s FAILED: %s", stage, reason)
    return {
        "status": "failed",
        "failed_at": stage,
        "reason": one_line(reason),
        "log": str(log_path) if log_path else None,
        "peak_rss_mb": round(peak),
        **problem,
    }


def _settle_paths(tmp: Path, out_dir: Path) -> None:
    """Name the folder's final place, not the temporary one it was written in, in its JSON files."""
    for path in tmp.glob("*.json"):
        text = path.read_text()
        if str(tmp) in text:
            path.write_text(text.replace(str(tmp), str(out_dir)))


def _reason(exc: BaseException) -> str:
    """One line for the record: a StageError's own message, any other exception with its type."""
    from . import StageError

    return one_line(str(exc) if isinstance(exc, StageError) else f"{type(exc).__name__}: {exc}")


def _die_with_parent() -> None:
    """Ask Linux to kill this (child) process when its parent dies, so no orphan works on (elsewhere: no-op)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _passed_on(child: int):
    """A handler that hands SIGTERM / SIGINT on to the child; the child's death then ends this process too."""

    def handler(sig, _frame) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, sig)

    return handler


def _in_child(work: Callable[[Path], object], folder: Path) -> dict:
    """Run ``work(folder)`` in a forked child; its peak RSS (``peak_rss_mb``) alone on success, else
    with what went wrong.

    An exception in the child is reported by type and message (its traceback goes to the log);
    a child killed by SIGKILL is reported as ``killed``, one that crashed (SIGSEGV, SIGABRT, ...) by
    its signal; an interrupting signal (the run was stopped) is passed on to this process, so that
    nothing is recorded.
    """
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: do the work, report an exception through the pipe, never return
        os.close(read_end)
        _die_with_parent()
        code = 0
        try:
            work(folder)
        except BaseException as exc:  # noqa: BLE001 - every failure of the work becomes the record
            traceback.print_exc()
            os.write(write_end, json.dumps({"reason": _reason(exc), "error": type(exc).__name__}).encode())
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(code)
    os.close(write_end)
    previous = {sig: signal.signal(sig, _passed_on(pid)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with os.fdopen(read_end, "rb") as pipe:
            report = pipe.read()
        _, status = os.waitpid(pid, 0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return {"peak_rss_mb": peak_mb}
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGKILL:
            return {"killed": True, "peak_rss_mb": peak_mb}
        if sig in INTERRUPTIONS:
            os.kill(os.getpid(), sig)  # interrupted: die the same way, record nothing
            raise SystemExit(128 + sig)
        name = signal.Signals(sig).name
        reason = f"the stage crashed with {name} (in native code; the log has its stack)"
        return {"reason": reason, "error": name, "peak_rss_mb": peak_mb}
    problem = json.loads(report) if report else {"reason": f"the stage exited with status {os.WEXITSTATUS(status)}"}
    problem["peak_rss_mb"] = peak_mb
    return problem


def failures(results: Path, models: Iterable[str]) -> list[dict]:
    """Every failure recorded under ``results`` for ``models``: artifact folders holding ``failed.json``,
    failed accuracy JSONs and failed rows of the timing and generation CSVs.

    Each item: ``model``, ``what`` (the folder, or the backend and the table), ``failed_at``,
    ``reason``, ``log`` and ``path`` (the record: what :func:`forget` removes).
    """
    import csv

    found = []
    for model in models:
        base = Path(results) / model
        if not base.is_dir():
            continue
        for record_path in sorted(base.rglob(FAILED)):
            folder = record_path.parent
            if folder.name.startswith("."):
                continue
            record = json.loads(record_path.read_text())
            if found_not_applicable(record.get("reason")):
                continue  # the stage's finding about the model: a retry finds the same
            found.append({"model": model, "what": str(folder.relative_to(base)), **_facts(record), "path": folder})
        for path in sorted(base.glob("*/accuracy/*.json")):
            record = json.loads(path.read_text())
            if record.get("status") == "failed" and not found_not_applicable(record.get("reason")):
                what = f"{record.get('backend')} (evaluate, {path.parent.parent.name})"
                found.append({"model": model, "what": what, **_facts(record), "path": path})
        for path in sorted([*base.glob("*/timing/t*.csv"), *base.glob("generation/t*.csv")]):
            with open(path, newline="") as f:
                for row in csv.DictReader(f):
                    if row.get("status") == "failed" and row.get("failed_at") in ("timing", "generation"):
                        if found_not_applicable(row.get("reason")):
                            continue
                        if "ThreadsRefusedError" in (row.get("reason") or ""):
                            continue  # a thread count the runtime refuses here, by declaration: a retry gives the same
                        what = f"{row.get('backend')} ({path.parent.name} {path.stem})"
                        found.append({"model": model, "what": what, **_facts(row), "path": path})
    return found


def _facts(record: dict) -> dict:
    return {k: record.get(k) or "" for k in ("failed_at", "reason", "log")}


def failure_lines(found: list[dict]) -> list[str]:
    """The run's last lines: one per failed stage (a failure passed on to later stages is named once)."""
    if not found:
        return []
    first = {}
    for item in found:
        first.setdefault((item["model"], item["failed_at"], item["log"]), item)
    lines = [f"{len(first)} stage(s) failed; their formats are rows 'failed at <stage>' in the summary:"]
    for item in first.values():
        lines.append(f"  {item['model']}: {item['what']} failed at {item['failed_at']}: {item['reason']}")
        lines.append(f"      log: {item['log'] or '(none)'}")
    lines.append("The next run retries exactly these stages (and what depends on them).")
    return lines


def forget(found: list[dict]) -> None:
    """Remove the records of ``found``, so that the next run makes them again (its plan shows them)."""
    for path in {item["path"] for item in found}:
        path = Path(path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


def run_job(smk, work: Callable[[Path], object], *, inputs: Iterable[Path | str] = ()) -> dict | None:
    """:func:`run_stage` for a Snakemake job: the rule's name, its ``artifact`` output, its log and
    its declared ``mem_mb``; everything the stage prints goes to the rule's log."""
    from .logs import log_to

    mem_mb = getattr(smk.resources, "mem_mb", None)
    with log_to(smk.log[0]):
        return run_stage(
            smk.rule,
            Path(smk.output.artifact),
            work,
            inputs=inputs,
            log_path=smk.log[0],
            mem_mb=mem_mb if isinstance(mem_mb, int) else None,
        )
