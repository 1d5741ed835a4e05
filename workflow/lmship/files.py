"""Small file helpers: atomic outputs (ONNX with external data too), JSON, sizes, stage metrics, reading ONNX."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import StageError
from .logs import peak_rss_mb


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_leftovers(target: Path) -> None:
    """Remove what a killed earlier attempt at ``target`` left (one job writes a target at a time): its
    ``.<name>.partial-<pid>`` sibling, and the siblings of that, ``..<name>.partial-<pid>.partial-<pid>*``,
    which a stage writing into a partial folder (a failure-recorded artifact folder) leaves beside it."""
    for pattern in (f".{target.name}.partial-*", f"..{target.name}.partial-*"):
        for stale in target.parent.glob(pattern):
            _remove(stale)


@contextmanager
def atomic_output(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; move it onto ``target`` only on success.

    Works for files and directories. A crash, an exception or a kill leaves at
    most a hidden ``.<name>.partial-<pid>`` sibling, never a half-written
    ``target``; the next attempt removes such leftovers.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"stage produced nothing at {tmp} for {target}")
        _remove(target)
        tmp.replace(target)
    finally:
        _remove(tmp)


#: An ONNX file may not pass 2 GB (protobuf); larger models keep their weights in ``<name>.data`` beside it.
PROTOBUF_LIMIT = 2**31 - 1


@contextmanager
def atomic_onnx(target: Path) -> Iterator[Path]:
    """Yield a path with ``target``'s own name in a private temporary folder; on success move the ONNX
    file, and its external data file ``<name>.data`` if the writer made one, onto ``target``.

    External data is referenced by file name from inside the model, so it must be written under its
    final name: the folder, not the name, is what is temporary.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    folder = target.with_name(f".{target.name}.partial-{os.getpid()}")
    folder.mkdir()
    data = target.with_name(target.name + ".data")
    try:
        staged = folder / target.name
        yield staged
        if not staged.exists():
            raise FileNotFoundError(f"stage produced nothing at {staged} for {target}")
        for path in (target, data):
            _remove(path)
        if (folder / data.name).exists():
            (folder / data.name).replace(data)
        staged.replace(target)
    finally:
        _remove(folder)


def external_data_needed(weight_bytes: int) -> bool:
    """Whether a model with ``weight_bytes`` of initialisers must keep them outside its protobuf."""
    return weight_bytes > PROTOBUF_LIMIT - 64 * 2**20  # room for the graph itself


def save_onnx(model, path: Path) -> Path:
    """Write the in-memory ``model`` to ``path``, its weights in ``<name>.data`` beside it when they pass
    what one protobuf holds (``path`` must have its final name: the data file is referenced by name)."""
    import onnx

    weight_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    if not external_data_needed(weight_bytes):
        onnx.save(model, str(path))
        return Path(path)
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=Path(path).name + ".data",
        size_threshold=1024,
    )
    return Path(path)


def write_json(path: Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_output(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_jsonable) + "\n")
    return Path(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def size_bytes(path: Path) -> int:
    """Size of a file, the total of the files under a directory, or of an OpenVINO IR (``.xml`` + its ``.bin``)."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    weights = path.with_suffix(".bin")
    if path.suffix == ".xml" and weights.is_file():
        return path.stat().st_size + weights.stat().st_size
    data = path.with_name(path.name + ".data")  # an ONNX model's external data
    if path.suffix == ".onnx" and data.is_file():
        return path.stat().st_size + data.stat().st_size
    return path.stat().st_size


def stage_metrics(metrics_json: Path | None, artifact: Path, started: float, **fields: Any) -> dict:
    """A stage's metrics: its artifact and size, ``fields``, seconds since ``started``, peak RSS.

    Written to ``metrics_json`` (atomically) unless it is ``None``; returned either way.
    """
    metrics = {
        "artifact": str(artifact),
        "size_mb": round(size_bytes(artifact) / 1e6, 1),
        **fields,
        "seconds": round(time.monotonic() - started, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    if metrics_json is not None:
        write_json(metrics_json, metrics)
    return metrics


def load_onnx(path: Path, *, weights: bool = True):
    """``onnx.load`` that names the file when it is truncated or not ONNX; ``weights=False`` leaves
    external data (the weights of a model above 2 GB) on disk."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        return onnx.load(str(path), load_external_data=weights)
    except (DecodeError, ValueError, OSError, RuntimeError) as exc:
        raise StageError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); it may be truncated. "
            "Delete it and rerun the workflow to rebuild it."
        ) from exc


def linked_copy(hf_dir: Path, folder: Path, config: dict) -> Path:
    """``folder`` holding links to every file of the Hugging Face folder ``hf_dir`` but its
    ``config.json``, which is ``config`` instead: a vendor's tool reads the model with a config it
    understands, and the prepared folder stays as it is."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for item in Path(hf_dir).iterdir():
        if item.name != "config.json" and item.is_file():
            (folder / item.name).symlink_to(item.resolve())
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder
