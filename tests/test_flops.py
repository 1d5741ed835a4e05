"""The FLOP count (lmship.flops): the attention term, by hand and against the exported graph.

Each test names the bug it catches; each was checked by introducing that bug.
"""

from __future__ import annotations

import numpy as np

from conftest import SEQ, TINY_SPEC

# -- 2. the attention term of the FLOP count, by hand ---------------------------------------


def test_attention_flops_by_hand_tiny():
    """Bug: attention term dropped (or seq instead of seq^2, kv heads instead of heads).

    Dropping it changes the tiny model's total by < 10 %, so the converter comparison misses it.
    """
    from lmship.flops import forward_ops

    arch = TINY_SPEC["architecture"]  # hidden 64, 4 heads (2 kv), 2 layers
    ops = forward_ops(arch, 1, SEQ)
    # per layer and head: QK^T is [24 x 16] @ [16 x 24], AV is [24 x 24] @ [24 x 16];
    # each is 24 * 24 * 16 = 9216 multiply-adds = 18432 ops
    per_head = 2 * (24 * 24 * 16) * 2
    assert ops["attention"] == per_head * 4 * 2 == 294_912
    assert ops["total"] == ops["linear"] + ops["attention"]
    # batch 3 triples it, seq doubled quadruples it
    assert forward_ops(arch, 3, SEQ)["attention"] == 3 * 294_912
    assert forward_ops(arch, 1, 2 * SEQ)["attention"] == 4 * 294_912


def test_attention_flops_by_hand_smollm_135m():
    from conftest import SMOLLM2_135M_ARCH
    from lmship.flops import forward_ops

    cfg = SMOLLM2_135M_ARCH
    # 30 layers x 9 query heads x (QK^T + AV) x 128 x 128 x 64 multiply-adds x 2 ops
    assert forward_ops(cfg, 1, 128)["attention"] == 30 * 9 * 2 * 128 * 128 * 64 * 2 == 1_132_462_080


def test_attention_flops_match_the_exported_graph(simplified):
    """The attention term equals the ops of the graph's activation x activation MatMuls (shape inference)."""
    import onnx

    from lmship.flops import forward_ops

    model = onnx.shape_inference.infer_shapes(onnx.load(str(simplified)))
    inits = {i.name for i in model.graph.initializer}
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]
    }
    ops = 0
    matmuls = 0
    for node in model.graph.node:
        if node.op_type == "MatMul" and not ({node.input[0], node.input[1]} & inits):
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            assert all(a) and all(b), f"{node.name}: shapes not static {a} {b}"
            ops += 2 * int(np.prod(a)) * b[-1]
            matmuls += 1
    assert matmuls == 2 * TINY_SPEC["architecture"]["num_hidden_layers"]
    assert ops == forward_ops(TINY_SPEC["architecture"], 1, SEQ)["attention"]
