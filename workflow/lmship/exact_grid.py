"""Lossless low-bit re-encoding of weights that already sit on a GGUF grid.

The default model's fp32 weights were dequantised from a Q4_1 GGUF file, so
every decoder weight is exactly ``d * q + m`` with ``q`` in 0..15 per block of
32 input values, and the tied embedding is exactly Q8_0 (``d * q``, ``q`` in
-127..127). Re-quantising such weights to int8 loses information; storing
them on their own grid loses none. This module finds those grids and writes
them with ONNX Runtime's block-quantised contrib ops:

* Q4_1 MatMul weight -> ``com.microsoft.MatMulNBits`` (4 bits, block 32, integer
  zero point ``zp = round(-m / d)``) plus an exact fp32 correction
  ``Y += blocksum(X) @ (m + d * zp)`` (the zero point's rounding remainder);
* Q8_0 embedding -> ``com.microsoft.GatherBlockQuantized`` (8 bits, block 32);
* anything not on a grid (here: the LM head, kept fp32 for speed) is left as is.

Nothing is re-quantised, so the model's answers do not change (compute stays
fp32: ``accuracy_level`` 0). For a model whose weights are not on such a grid
the result is simply the fp32 model, and the stage says so.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

BLOCK = 32


def q4_1_grid(weight: np.ndarray, tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``weight`` [K, N] (ONNX MatMul B). Its Q4_1 codes along K as (q [N, K/32, 32], d, m), or None."""
    k, n = weight.shape
    if k % BLOCK:
        return None
    w = weight.T.astype(np.float64).reshape(n, k // BLOCK, BLOCK)
    lo, hi = w.min(-1), w.max(-1)
    d = (hi - lo) / 15.0
    q = (w - lo[..., None]) / np.where(d == 0, 1.0, d)[..., None]
    rounded = np.round(q)
    if np.abs(q - rounded).max() > tol:
        return None
    return rounded.astype(np.uint8), d, lo


def q8_0_grid(weight: np.ndarray, tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray] | None:
    """``weight`` [K, N]. Its Q8_0 codes along K as (q [N, K/32, 32] in -127..127, d), or None."""
    k, n = weight.shape
    if k % BLOCK:
        return None
    w = weight.T.astype(np.float64).reshape(n, k // BLOCK, BLOCK)
    d = np.abs(w).max(-1) / 127.0
    q = w / np.where(d == 0, 1.0, d)[..., None]
    rounded = np.round(q)
    if np.abs(q - rounded).max() > tol:
        return None
    return rounded.astype(np.int16), d


def _pack_nibbles(values: np.ndarray) -> np.ndarray:
    """Pack uint8 values < 16 along the last axis, two per byte (low nibble first)."""
    if values.shape[-1] % 2:
        values = np.concatenate([values, np.zeros((*values.shape[:-1], 1), np.uint8)], axis=-1)
    return (values[..., 0::2] | (values[..., 1::2] << 4)).astype(np.uint8)


def reencode(model) -> dict[str, int]:
    """Rewrite ``model`` (an onnx.ModelProto, in place); return how many weights took each form."""
    from onnx import helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    stats = {"matmul_q4_1": 0, "matmul_fp32": 0, "gather_q8_0": 0}
    added: list = []
    nodes = _matmuls_to_q4_1(list(graph.node), inits, added, stats)
    nodes = _gathers_to_q8_0(nodes, inits, added, stats)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {x for n in graph.node for x in n.input}
    keep = [i for i in [*graph.initializer, *added] if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return stats


def _matmuls_to_q4_1(nodes: list, inits: dict, added: list, stats: dict[str, int]) -> list:
    """First pass: each MatMul by a Q4_1-grid weight becomes MatMulNBits 4-bit plus the exact correction."""
    from onnx import numpy_helper

    out = []
    for node in nodes:
        weight = None
        if node.op_type == "MatMul" and node.input[1] in inits:
            weight = numpy_helper.to_array(inits[node.input[1]])
        if weight is None or weight.ndim != 2:
            if node.op_type == "MatMul":
                stats["matmul_fp32"] += weight is not None
            out.append(node)
            continue
        grid = q4_1_grid(weight)
        if grid is None:
            stats["matmul_fp32"] += 1
            out.append(node)
            continue
        out += _q4_1_matmul(node, weight, grid, added)
        stats["matmul_q4_1"] += 1
    return out


def _q4_1_matmul(node, weight: np.ndarray, grid, added: list) -> list:
    """The nodes replacing ``node`` (``Y = X @ weight``) for a weight on the Q4_1 ``grid``."""
    from onnx import helper, numpy_helper

    q, d, m = grid
    k, n = weight.shape
    zp = np.clip(np.round(np.where(d == 0, 0.0, -m / np.where(d == 0, 1.0, d))), 0, 15)
    correction = (m + d * zp).T.astype(np.float32)  # [K/32, N]
    base, y = node.input[1] + "_q4", node.output[0]
    tensors = [
        numpy_helper.from_array(_pack_nibbles(q), base),
        numpy_helper.from_array(d.astype(np.float32).reshape(-1), base + "_scales"),
        numpy_helper.from_array(_pack_nibbles(zp.astype(np.uint8)).reshape(-1), base + "_zp"),
        numpy_helper.from_array(correction, base + "_corr"),
        numpy_helper.from_array(np.array([0, 0, k // BLOCK, BLOCK], np.int64), base + "_blocks"),
        numpy_helper.from_array(np.array([-1], np.int64), base + "_axis"),
    ]
    added += tensors
    qn, sn, zn, cn, bn, an = (t.name for t in tensors)
    return [
        helper.make_node(
            "MatMulNBits",
            [node.input[0], qn, sn, zn],
            [y + "_nbits"],
            name=node.name + "_q4",
            domain="com.microsoft",
            K=k,
            N=n,
            bits=4,
            block_size=BLOCK,
        ),
        helper.make_node("Reshape", [node.input[0], bn], [y + "_xblocks"], name=node.name + "_blocks"),
        helper.make_node("ReduceSum", [y + "_xblocks", an], [y + "_xsum"], name=node.name + "_sum", keepdims=0),
        helper.make_node("MatMul", [y + "_xsum", cn], [y + "_corr"], name=node.name + "_corr"),
        helper.make_node("Add", [y + "_nbits", y + "_corr"], [y], name=node.name + "_add"),
    ]


def _gathers_to_q8_0(nodes: list, inits: dict, added: list, stats: dict[str, int]) -> list:
    """Second pass: each Gather from a Q8_0-grid table (the embedding) becomes GatherBlockQuantized 8-bit."""
    from onnx import helper, numpy_helper

    nodes = list(nodes)
    for i, node in enumerate(nodes):
        if node.op_type != "Gather" or node.input[0] not in inits:
            continue
        if next((a.i for a in node.attribute if a.name == "axis"), 0) != 0:
            continue
        table = numpy_helper.to_array(inits[node.input[0]])  # [vocab, hidden], blocks along hidden
        grid = q8_0_grid(table.T) if table.ndim == 2 else None
        if grid is None:
            continue
        q, d = grid
        data = numpy_helper.from_array((q + 128).astype(np.uint8).reshape(table.shape), node.input[0] + "_q8")
        scales = numpy_helper.from_array(d.astype(np.float32), node.input[0] + "_q8_scales")
        added += [data, scales]
        nodes[i] = helper.make_node(
            "GatherBlockQuantized",
            [data.name, node.input[1], scales.name],
            list(node.output),
            name=node.name + "_q8",
            domain="com.microsoft",
            gather_axis=0,
            quantize_axis=1,
            block_size=BLOCK,
            bits=8,
        )
        stats["gather_q8_0"] += 1
    return nodes


def reencode_file(in_onnx: Path, out_onnx: Path) -> dict[str, int]:
    import onnx

    model = onnx.load(str(in_onnx))
    stats = reencode(model)
    onnx.save(model, str(out_onnx))
    if stats["matmul_q4_1"] == 0:
        log.warning("no MatMul weight of %s is on a Q4_1 grid: the output is the fp32 model", in_onnx)
    return stats
