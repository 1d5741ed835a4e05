"""A GGUF file's header read with the standard library: its metadata and its tensor table.

Nothing past the tensor table is read, so a multi-GB checkpoint is sized and typed in
milliseconds (the Snakefile calls these while it parses).
"""

from __future__ import annotations

import struct
from pathlib import Path

#: ggml's tensor type ids (ggml.h, enum ggml_type) by name, for the types a checkpoint is shipped in.
GGML_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    30: "BF16",
}


def gguf_types(path: Path) -> dict[str, int] | None:
    """How many tensors of each ggml type a GGUF file holds (the header only), or None if not a GGUF."""
    table = gguf_table(path)
    if table is None:
        return None
    counts: dict[str, int] = {}
    for _, kind in table[1]:
        name = GGML_TYPES.get(kind, f"type {kind}")
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def gguf_table(path: Path) -> tuple[dict, list[tuple[tuple[int, ...], int]]] | None:
    """A GGUF file's metadata and its tensors' (shape, ggml type id), read from the header alone."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            return None
        version, count, kvs = struct.unpack("<IQQ", f.read(20))
        if version < 2:
            return None
        meta = {}
        for _ in range(kvs):
            key = _gguf_string(f)
            meta[key] = _gguf_value(f, struct.unpack("<I", f.read(4))[0])
        tensors = []
        for _ in range(count):
            _gguf_string(f)
            (dims,) = struct.unpack("<I", f.read(4))
            shape = struct.unpack(f"<{dims}Q", f.read(8 * dims))
            kind, _offset = struct.unpack("<IQ", f.read(12))
            tensors.append((shape, kind))
    return meta, tensors


_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _gguf_string(f) -> str:
    (length,) = struct.unpack("<Q", f.read(8))
    return f.read(length).decode("utf-8", errors="replace")


def _gguf_value(f, kind: int):
    """A metadata value; an array is read past and returned as its length."""
    if kind in _GGUF_SCALARS:
        code = _GGUF_SCALARS[kind]
        return struct.unpack("<" + code, f.read(struct.calcsize(code)))[0]
    if kind == 8:
        return _gguf_string(f)
    if kind == 9:
        item, count = struct.unpack("<IQ", f.read(12))
        if item in _GGUF_SCALARS:
            f.seek(count * struct.calcsize(_GGUF_SCALARS[item]), 1)
        else:
            for _ in range(count):
                _gguf_value(f, item)
        return count
    raise ValueError(f"unknown GGUF metadata type {kind}")
