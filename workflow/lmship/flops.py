"""Arithmetic operations per forward pass, derived from a decoder's config.json.

Counted as 2 operations (multiply + add) per multiply-accumulate:

* every linear layer: ``2 * tokens * in_features * out_features``, where a
  layer has q (h x heads*d), k and v (h x kv_heads*d each), o (heads*d x h),
  gate and up (h x ffn each) and down (ffn x h), plus the LM head (h x vocab);
* attention: ``QK^T`` and ``AV``, each ``2 * batch * heads * seq^2 * d`` per
  layer (the full square, as the exported graphs compute it with a mask).

Norms, rotary embeddings, softmax and activations are element-wise and left
out (a small share of the total). The TFLite stage records the converter's own estimate next
to this count (``converter_arithmetic_ops`` in its metrics), so the two can be compared per model.
"""

from __future__ import annotations

import json
from pathlib import Path


def forward_ops(config: dict, batch: int, seq: int) -> dict[str, float]:
    h = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    d = config.get("head_dim") or h // heads
    ffn = config["intermediate_size"]
    layers = config["num_hidden_layers"]
    vocab = config["vocab_size"]
    tokens = batch * seq
    per_layer_params = h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * ffn
    linear = 2.0 * tokens * (layers * per_layer_params + h * vocab)
    attention = 2 * 2.0 * batch * heads * seq * seq * d * layers
    return {"linear": linear, "attention": attention, "total": linear + attention}


def forward_ops_from_folder(hf_dir: Path, batch: int, seq: int) -> dict[str, float]:
    return forward_ops(json.loads((Path(hf_dir) / "config.json").read_text()), batch, seq)
