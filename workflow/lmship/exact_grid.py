"""Lossless low-bit re-encoding of weights that already sit on a GGUF grid.

The default model's fp32 weights were dequantised from a Q4_1 GGUF file, so
every decoder weight is exactly ``d * q + m`` with ``q`` in 0..15 per block of
32 input values, and the tied embedding is exactly Q8_0 (``d * q``, ``q`` in
-127..127). Re-quantising such weights to int8 loses information; storing
them on their own grid loses none. This module finds those grids and writes
them with ONNX Runtime's block-quantised contrib ops:

* Q4_1 MatMul weight -> ``com.microsoft.MatMulNBits`` (4 bits, block 32, zero
  point 0, so it computes ``X @ (d * q)``) plus the block minimum as an fp32
  correction ``Y += blocksum(X) @ m``: the stored ``q``, ``d`` and ``m`` are
  exactly GGUF's, and ``d * q + m`` rebuilds every weight bit for bit;
* Q8_0 embedding -> ``com.microsoft.GatherBlockQuantized`` (8 bits, block 32);
* Q8_0 MatMul weight (the tied LM head) multiplying one row (the generation graphs'
  last position) -> two 4-bit ``MatMulNBits`` and an Add: the
  code ``q`` (-127..127) is stored as ``u = q + 128`` split into its nibbles, high
  ``h`` with scale ``16 d`` and zero point 8, low ``l`` with scale ``d`` and zero point
  0, so ``16 d (h - 8) + d l = d q``. Both parts are exact in fp32 (a small integer
  times GGUF's fp16 scale), and so is their sum. (ONNX Runtime's own 8-bit
  MatMulNBits computes fp32 only through a slow reference path on CPU at accuracy_level 0;
  its fast path quantises the activations.) Where the head multiplies many rows (the
  forward graph's positions) it stays an fp32 MatMul: two 4-bit products cost more than one
  fp32 product there (measured in docs/measuring.md).
* anything not on a grid is left as is.

Nothing is re-quantised, so the model's answers do not change (compute stays
fp32: ``accuracy_level`` 0). :func:`verify_lossless` proves it on the written
file: every re-encoded weight is rebuilt from what was stored and compared bit
for bit with the original, and the stage fails on any difference. A model with
no weight on such a grid is not applicable: the stage fails rather than write
an fp32 copy under a 4-bit name.
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


def reencode(model, *, decodes: bool = False) -> dict[str, int]:
    """Rewrite ``model`` (an onnx.ModelProto, in place); return how many weights took each form.

    ``decodes``: the graph is a generation loop's, run on one new position per step but for the prompt
    (its rows unknown to shape inference), so a Q8_0 head over unknown rows takes the two-part 4-bit
    form too (the decode steps' cost is the head's bytes; the prompt pays two products once)."""
    from onnx import helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    stats = {"matmul_q4_1": 0, "matmul_q8_0": 0, "matmul_q8_0_kept_fp32": 0, "matmul_fp32": 0, "gather_q8_0": 0}
    added: list = []
    shapes = _shapes(model)
    nodes = _matmuls_to_q4_1(list(graph.node), inits, added, stats, shapes)
    nodes = _gathers_to_q8_0(nodes, inits, added, stats)
    nodes = _matmuls_to_q8_0(nodes, inits, added, stats, shapes, unknown_rows=decodes)
    del graph.node[:]
    graph.node.extend(nodes)
    used = {x for n in graph.node for x in n.input}
    keep = [i for i in [*graph.initializer, *added] if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return stats


def _shapes(model) -> dict[str, list[int | None]]:
    """Shape (None for an unknown dimension) of every tensor whose shape ONNX shape inference knows."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
        for v in values
        if v.type.tensor_type.HasField("shape")
    }


def _rows(shape: list[int | None] | None) -> int | None:
    """How many rows a MatMul input of ``shape`` has (all dimensions but the last), None if unknown."""
    if not shape or any(d is None for d in shape[:-1]):
        return None
    return int(np.prod(shape[:-1], dtype=np.int64))


def _matmuls_to_q4_1(nodes: list, inits: dict, added: list, stats: dict[str, int], shapes: dict) -> list:
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
        if node.input[0] not in shapes:
            from . import StageError

            raise StageError(
                f"the rank of {node.input[0]!r} (input of MatMul {node.name!r}) is unknown to ONNX shape "
                "inference; the exact-grid correction needs it to cut the input into blocks"
            )
        out += _q4_1_matmul(node, weight, grid, added, len(shapes[node.input[0]]))
        stats["matmul_q4_1"] += 1
    return out


def _q4_1_matmul(node, weight: np.ndarray, grid, added: list, rank: int) -> list:
    """The nodes replacing ``node`` (``Y = X @ weight``, ``X`` of ``rank``) for a weight on the Q4_1 ``grid``."""
    from onnx import helper, numpy_helper

    q, d, m = grid
    k, n = weight.shape
    zp = np.zeros_like(d)  # MatMulNBits then computes X @ (d * q); the minimum m is the correction
    correction = m.T.astype(np.float32)  # [K/32, N]
    base, y = node.input[1] + "_q4", node.output[0]
    tensors = [
        numpy_helper.from_array(_pack_nibbles(q), base),
        numpy_helper.from_array(d.astype(np.float32).reshape(-1), base + "_scales"),
        numpy_helper.from_array(_pack_nibbles(zp.astype(np.uint8)).reshape(-1), base + "_zp"),
        numpy_helper.from_array(correction, base + "_corr"),
        numpy_helper.from_array(np.array([0] * (rank - 1) + [k // BLOCK, BLOCK], np.int64), base + "_blocks"),
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


def _matmuls_to_q8_0(
    nodes: list, inits: dict, added: list, stats: dict[str, int], shapes: dict, *, unknown_rows: bool = False
) -> list:
    """Third pass: each MatMul by a Q8_0-grid weight (the tied LM head) that multiplies one row
    becomes two 4-bit MatMulNBits and an Add.

    Runs after :func:`_matmuls_to_q4_1`, which leaves the MatMuls it did not take (and counted
    them ``matmul_fp32``); one that is on the Q8_0 grid moves to ``matmul_q8_0``. With more
    rows (or rows unknown, unless ``unknown_rows``) it stays fp32, counted ``matmul_q8_0_kept_fp32`` too.
    """
    from onnx import numpy_helper

    out = []
    for node in nodes:
        if node.op_type != "MatMul" or node.input[1] not in inits:
            out.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        grid = q8_0_grid(weight) if weight.ndim == 2 else None
        if grid is None:
            out.append(node)
            continue
        rows = _rows(shapes.get(node.input[0]))
        if rows != 1 and not (unknown_rows and rows is None):
            stats["matmul_q8_0_kept_fp32"] += 1
            out.append(node)
            continue
        out += _q8_0_matmul(node, weight, grid, added)
        stats["matmul_fp32"] -= 1
        stats["matmul_q8_0"] += 1
    return out


def _q8_0_matmul(node, weight: np.ndarray, grid, added: list) -> list:
    """``X @ weight`` for a weight on the Q8_0 ``grid``: ``X @ (16d (h - 8)) + X @ (d l)``, h, l nibbles of q + 128."""
    from onnx import helper, numpy_helper

    q, d = grid
    k, n = weight.shape
    u = (q + 128).astype(np.uint8)  # 1..255
    y = node.output[0]
    nodes = []
    for part, codes, scale, zero in (("hi", u >> 4, 16.0 * d, 8), ("lo", u & 0x0F, d, 0)):
        base = f"{node.input[1]}_q8{part}"
        tensors = [
            numpy_helper.from_array(_pack_nibbles(codes), base),
            numpy_helper.from_array(scale.astype(np.float32).reshape(-1), base + "_scales"),
            numpy_helper.from_array(_pack_nibbles(np.full(d.shape, zero, np.uint8)).reshape(-1), base + "_zp"),
        ]
        added += tensors
        nodes.append(
            helper.make_node(
                "MatMulNBits",
                [node.input[0], *(t.name for t in tensors)],
                [f"{y}_q8{part}"],
                name=f"{node.name}_q8{part}",
                domain="com.microsoft",
                K=k,
                N=n,
                bits=4,
                block_size=BLOCK,
            )
        )
    nodes.append(helper.make_node("Add", [f"{y}_q8hi", f"{y}_q8lo"], [y], name=node.name + "_q8add"))
    return nodes


def _nbits_part(node, after: dict) -> np.ndarray:
    """The weight [K, N] a 4-bit MatMulNBits ``node`` multiplies by, ``scale * (code - zero point)``, in float64."""
    attrs = {a.name: a.i for a in node.attribute}
    k, n = attrs["K"], attrs["N"]
    blocks = k // BLOCK
    q = _unpack_nibbles(after[node.input[1]], BLOCK).reshape(n, blocks, BLOCK).astype(np.float64)
    d = after[node.input[2]].reshape(n, blocks, 1).astype(np.float64)
    zp = _unpack_nibbles(after[node.input[3]].reshape(n, -1), blocks).reshape(n, blocks, 1).astype(np.float64)
    return (d * (q - zp)).reshape(n, k).T


def _q8_0_pairs(graph, after: dict) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rebuild every Q8_0 MatMul weight from its nibble pair: {original name: weight [K, N] float32}, and the faults.

    Each part ``scale * (code - zero point)`` must be exact in fp32 (what a correct fp32 kernel
    multiplies by), the two must read the same input and be summed by one Add; their exact sum
    is the rebuilt weight.
    """
    nbits = {n.input[1]: n for n in graph.node if n.op_type == "MatMulNBits"}
    adds = {frozenset(n.input) for n in graph.node if n.op_type == "Add"}
    rebuilt, faults = {}, []
    for b_name, hi in nbits.items():
        if not b_name.endswith("_q8hi"):
            continue
        name = b_name.removesuffix("_q8hi")
        lo = nbits.get(name + "_q8lo")
        if lo is None or lo.input[0] != hi.input[0] or frozenset((hi.output[0], lo.output[0])) not in adds:
            faults.append(f"{name} (its low nibbles are missing or not added to its high ones)")
            continue
        parts = [_nbits_part(hi, after), _nbits_part(lo, after)]
        if any(p.shape != parts[0].shape for p in parts) or any(
            not np.array_equal(p.astype(np.float32).astype(np.float64), p) for p in parts
        ):
            faults.append(f"{name} (a nibble part is not exact in fp32)")
            continue
        total = parts[0] + parts[1]
        if not np.array_equal(total.astype(np.float32).astype(np.float64), total):
            faults.append(f"{name} (the sum of its nibble parts is not exact in fp32)")
            continue
        rebuilt[name] = total.astype(np.float32)
    orphans = [b for b in nbits if b.endswith("_q8lo") and b.removesuffix("_q8lo") + "_q8hi" not in nbits]
    faults += [f"{b.removesuffix('_q8lo')} (low nibbles without high ones)" for b in orphans]
    return rebuilt, faults


def _unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    """Inverse of :func:`_pack_nibbles` for ``count`` values along the last axis."""
    out = np.empty((*packed.shape[:-1], packed.shape[-1] * 2), np.uint8)
    out[..., 0::2] = packed & 0x0F
    out[..., 1::2] = packed >> 4
    return out[..., :count]


def verify_lossless(original, reencoded) -> dict[str, int]:
    """Rebuild every re-encoded weight of ``reencoded`` from its stored codes and compare bit for bit.

    Both are onnx.ModelProto. MatMulNBits weights are rebuilt as
    ``float32(d * q) + m`` (GGUF's Q4_1 dequantisation, zero point checked to
    be 0), Q8_0 MatMul weights (the LM head) as the exact sum of their nibble
    pair ``16 d (h - 8) + d l`` and GatherBlockQuantized tables as
    ``float32(d * (q - 128))`` (Q8_0). Raises :class:`StageError` naming every
    weight that differs in any bit.
    """
    from onnx import numpy_helper

    from . import StageError

    before = {i.name: i for i in original.graph.initializer}
    after = {i.name: numpy_helper.to_array(i) for i in reencoded.graph.initializer}
    checked = {"matmul_q4_1": 0, "matmul_q8_0": 0, "gather_q8_0": 0}
    q8_heads, wrong = _q8_0_pairs(reencoded.graph, after)
    rebuilt_weights = [(name, rebuilt, np.zeros(1)) for name, rebuilt in q8_heads.items()]
    checked["matmul_q8_0"] = len(q8_heads)
    for node in reencoded.graph.node:
        if node.op_type == "MatMulNBits" and node.input[1].endswith(("_q8hi", "_q8lo")):
            continue
        if node.op_type == "MatMulNBits":
            qn, sn, zn = node.input[1], node.input[2], node.input[3]
            name = qn.removesuffix("_q4")
            attrs = {a.name: a.i for a in node.attribute}
            k, n = attrs["K"], attrs["N"]
            blocks = k // BLOCK
            q = _unpack_nibbles(after[qn], BLOCK).reshape(n, blocks, BLOCK).astype(np.float32)
            d = after[sn].reshape(n, blocks, 1).astype(np.float32)
            zp = _unpack_nibbles(after[zn].reshape(n, -1), blocks)
            m = after[qn + "_corr"].T.reshape(n, blocks, 1).astype(np.float32)
            rebuilt = (d * q + m).reshape(n, k).T
            checked["matmul_q4_1"] += 1
        elif node.op_type == "GatherBlockQuantized":
            data, sn = node.input[0], node.input[2]
            name = data.removesuffix("_q8")
            table = after[data]
            d = np.repeat(after[sn].astype(np.float32), BLOCK, axis=-1)[:, : table.shape[1]]
            rebuilt = d * (table.astype(np.float32) - 128.0)
            zp = np.zeros(1)
            checked["gather_q8_0"] += 1
        else:
            continue
        rebuilt_weights.append((name, rebuilt, zp))
    for name, rebuilt, zp in rebuilt_weights:
        source = numpy_helper.to_array(before[name]).astype(np.float32)
        if (
            zp.any()
            or rebuilt.shape != source.shape
            or not np.array_equal(rebuilt.view(np.uint32), source.view(np.uint32))
        ):
            diff = int((rebuilt != source).sum()) if rebuilt.shape == source.shape else -1
            wrong.append(f"{name} ({diff} of {source.size} values differ)")
    if wrong:
        raise StageError(
            "the 4-bit exact-grid model does not rebuild the original weights bit for bit: "
            + ", ".join(wrong[:5])
            + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else "")
        )
    return checked


def require_q4_1(stats: dict[str, int], source: Path, backend: str) -> None:
    """Refuse (:class:`StageError`) a re-encoding of ``source`` that found no weight on a Q4_1 grid."""
    from . import StageError

    if stats["matmul_q4_1"] == 0:
        raise StageError(
            f"not applicable: no MatMul weight of {source} sits on a GGUF Q4_1 grid (the model's weights "
            "were not dequantised from a Q4_1 GGUF file), so there is nothing to store losslessly in 4 bits; "
            f"remove {backend} from `backends` for this model"
        )


def reencode_file(
    in_onnx: Path,
    out_onnx: Path,
    *,
    decodes: bool = False,
    backend: str = "onnx_q4_exact",
    source: Path | None = None,
) -> dict[str, int]:
    """Re-encode ``in_onnx`` to ``out_onnx`` and prove on the written file that nothing was lost.

    ``decodes``: as :func:`reencode`'s; ``backend`` and ``source`` (default ``in_onnx``) name the format
    and the model in the refusal of a model with no weight on a Q4_1 grid.
    """
    from .files import load_onnx, save_onnx

    model = load_onnx(in_onnx)
    stats = reencode(model, decodes=decodes)
    require_q4_1(stats, Path(source or in_onnx), backend)
    save_onnx(model, out_onnx)
    proof = verify_lossless(load_onnx(in_onnx), load_onnx(out_onnx))
    log.info("%s: %s re-encoded weights rebuild the originals bit for bit", out_onnx, proof)
    return {**stats, **{f"bit_exact_{k}": v for k, v in proof.items()}}
