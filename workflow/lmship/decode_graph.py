"""Generation graphs of a decoder-only causal LM: a prefill graph and a decode-step graph.

The graphs are written once for every registered family (:mod:`lmship.families`): the
family's traits say which mechanisms apply (q/k norms, norm kind and offset, embedding
scale, fused projections, biases, sandwich norms, sliding windows, a second rotary base,
learned positions, logit softcapping) and where the weights live; the model's config gives
the values (epsilon, window, rotary fraction, ...). No graph code asks which family it is.

Both graphs are static-shape, batch 1, and keep every tensor at rank <= 2
(onnx2tf transposes 4-D tensors, and rank-2 inputs need no layout flags):

``prefill``  inputs ``input_ids`` [1, P] int64, then the host's rows of positions 0..P-1
             (:attr:`GraphIO.tables`: ``cos``/``sin`` [P, rotary_dim] of the rotary embedding;
             ``cos_local``/``sin_local`` for sliding layers with their own rotary base;
             ``pos_emb`` [P, hidden] for learned positions); outputs ``logits`` [1, vocab]
             (last position only), then per layer ``k{i}``, ``v{i}`` [kv_heads*P, head_dim]
             (rows ordered kv head, position).
``decode``   inputs ``token`` [1, 1] int64, the same rows of the token's position ([1, width]),
             the masks (:attr:`GraphIO.masks`: ``mask`` [1, L+1] over the full caches,
             ``mask_local`` [1, R+1] over the ring caches of sliding-window layers; 0 for filled
             slots, ``MASK_NEG`` for empty ones, last entry = the new token itself), then per layer
             ``k{i}``, ``v{i}`` [kv_heads*S, head_dim] with S = L slots, or R = min(window - 1, L)
             for a sliding-window layer; outputs ``logits`` [1, vocab], then per layer
             ``new_k{i}``, ``new_v{i}`` [kv_heads, head_dim].

The token's position enters only through the host's rows, taken from tables written by
:func:`lmship.host_tables.host_tables` (the model's own rotary embedding, attention scaling included, per
layer type when sliding layers have their own base; the learned position embedding). The host
writes a step's new K/V into slot ``p % S`` of the cache (``cache.reshape(kv_heads, S,
head_dim)[:, p % S] = new``); nothing is scattered inside the graph. K is cached after the
rotation, so the order of a ring's slots does not matter to attention: R cached positions plus
the token are exactly a window of R + 1 positions. The prefill applies each layer's window in
its causal mask; the host keeps the last R positions of a sliding layer's prefill K/V.
Grouped-query attention stacks the query heads that share a KV head as rows
([group*rows, head_dim] against K^T), so no KV head is repeated (no Expand/Tile) and no 4-D
tensor appears.

The conversion stages take these graphs like the forward graph, as their ``graph`` parameter,
and check them against PyTorch's generation (:mod:`lmship.gate`); the one step that differs
here, Gemm -> MatMul before the ONNX Runtime quantisers, is :func:`gemm_to_matmul`.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import StageError, dynamo_export
from .families import FULL, LAYER, SLIDING, Family, family_for, has_bias, layer_types, layer_windows
from .files import atomic_onnx, external_data_needed, save_onnx, size_bytes
from .logs import peak_rss_mb

log = logging.getLogger(__name__)

GRAPHS = ("prefill", "decode")
#: The {graph} wildcard of the conversion rules: the forward pass (``seq``) and the generation graphs.
#: The forward graph (a forward pass of ``{seq}`` tokens).
FORWARD = "seq"
GRAPH_FAMILIES = (FORWARD, *GRAPHS)


MASK_NEG = -1e4  # additive mask for empty cache slots and masked prompt positions
#: The host's rows of each rotary kind (``global``: full-attention layers, or every layer of a
#: family with one base; ``local``: sliding layers with their own base) and of learned positions.
ROTARY_TABLES = {"global": ("cos", "sin"), "local": ("cos_local", "sin_local")}
POSITION_TABLE = "pos_emb"
#: The layer type transformers' per-type rotary embedding takes for each rotary kind.
_ROTARY_LAYER_TYPE = {"global": FULL, "local": SLIDING}


# --------------------------------------------------------------------------- what the graphs hold


@dataclass(frozen=True)
class GraphIO:
    """The inputs and outputs of one model's graphs, as the host loop feeds them (kept in host.npz).

    ``tables``: the host's per-position rows (name, width); ``masks``: the decode masks (name,
    cache slots they cover); ``slots``: the cache slots of each layer.
    """

    layers: int
    kv_heads: int
    head_dim: int
    tables: tuple[tuple[str, int], ...]
    masks: tuple[tuple[str, int], ...]
    slots: tuple[int, ...]

    @property
    def table_names(self) -> list[str]:
        return [name for name, _ in self.tables]

    @property
    def mask_names(self) -> list[str]:
        return [name for name, _ in self.masks]

    @property
    def kv_names(self) -> list[str]:
        return [f"{c}{i}" for i in range(self.layers) for c in ("k", "v")]

    @property
    def kv_slots(self) -> list[int]:
        """The slots of each cache in :attr:`kv_names` order."""
        return [s for s in self.slots for _ in ("k", "v")]

    def mask_for(self, slots: int) -> str:
        """The decode mask over a cache of ``slots`` slots."""
        return next(name for name, s in self.masks if s == slots)

    def names(self, graph: str) -> tuple[list[str], list[str]]:
        """Input and output names of ``graph``."""
        kv = self.kv_names
        if graph == "prefill":
            return ["input_ids", *self.table_names], ["logits", *kv]
        if graph == "decode":
            return ["token", *self.table_names, *self.mask_names, *kv], ["logits", *[f"new_{n}" for n in kv]]
        raise StageError(f"unknown generation graph {graph!r}; expected one of {GRAPHS}")

    def to_host(self) -> dict[str, np.ndarray]:
        return {
            "io_tables": np.array(self.table_names, dtype=str),
            "io_table_widths": np.array([w for _, w in self.tables], dtype=np.int64),
            "io_masks": np.array(self.mask_names, dtype=str),
            "io_mask_slots": np.array([s for _, s in self.masks], dtype=np.int64),
            "slots": np.array(self.slots, dtype=np.int64),
        }

    @classmethod
    def from_host(cls, host: dict) -> GraphIO:
        missing = [k for k in ("io_tables", "io_masks", "slots") if k not in host]
        if missing:
            raise StageError(f"the host tables lack {missing}: they were written by an older lmship; write them again")
        return cls(
            layers=int(host["layers"]),
            kv_heads=int(host["kv_heads"]),
            head_dim=int(host["head_dim"]),
            tables=tuple(zip(map(str, host["io_tables"]), map(int, host["io_table_widths"]), strict=True)),
            masks=tuple(zip(map(str, host["io_masks"]), map(int, host["io_mask_slots"]), strict=True)),
            slots=tuple(int(s) for s in host["slots"]),
        )


@dataclass(frozen=True)
class Plan:
    """One model's graphs as its family and config decide them (no weights)."""

    family: Family
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    eps: float
    activation: str
    windows: tuple[int | None, ...]  # attention window of each layer (None: the whole cache)
    rotary: tuple[str | None, ...]  # rotary kind of each layer ('global' | 'local'; None: no rotary)
    rotary_dim: int  # leading head dims the rotation covers (0: no rotary)
    scales: tuple[float, ...]  # attention score scale of each layer
    softcap: float | None
    embed_scale: float | None

    @property
    def group(self) -> int:
        return self.heads // self.kv_heads

    def dims(self) -> dict[str, int]:
        return {
            "layers": self.layers,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "vocab": self.vocab,
        }

    def io(self, max_len: int) -> GraphIO:
        """The graphs' inputs and outputs for a cache of ``max_len`` slots."""
        slots = tuple(min(w - 1, max_len) if w else max_len for w in self.windows)
        rings = sorted({s for s in slots if s < max_len})
        if len(rings) > 1:
            raise StageError(f"{self.family.model_type}: layers with different windows {rings} are not supported")
        masks = (("mask", max_len),) if max_len in slots else ()
        masks += tuple(("mask_local", s) for s in rings)
        tables: tuple[tuple[str, int], ...] = ()
        for kind in ("global", "local"):
            if kind in self.rotary:
                tables += tuple((name, self.rotary_dim) for name in ROTARY_TABLES[kind])
        if self.family.positions:
            tables += ((POSITION_TABLE, self.hidden),)
        return GraphIO(self.layers, self.kv_heads, self.head_dim, tables, masks, slots)


def _attr(obj, path: str, family: Family):
    """``obj.<path>`` (dotted), or a :class:`StageError` saying the family's traits do not fit the model."""
    for part in path.split("."):
        if not hasattr(obj, part):
            raise StageError(
                f"{family.model_type}: {type(obj).__name__} has no {part!r} (looked up {path!r}): "
                "the family's declared weight names do not fit this model"
            )
        obj = getattr(obj, part)
    return obj


def _config_dict(config) -> dict:
    """The config as a dict, with the standard size names resolved (GPT-2 calls them n_layer, n_head, ...)."""
    names = ("num_hidden_layers", "num_attention_heads", "hidden_size", "vocab_size")
    return {**config.to_dict(), **{n: getattr(config, n) for n in names if hasattr(config, n)}}


def _scale(family: Family, config, head_dim: int, layer: int) -> float:
    """The attention score scale of ``layer`` as the family's traits and the config say."""
    scale = float(getattr(config, family.query_scale_key)) ** -0.5 if family.query_scale_key else head_dim**-0.5
    if family.scaled_key and not getattr(config, family.scaled_key, True):
        scale = 1.0
    if family.inverse_layer_scale_key and getattr(config, family.inverse_layer_scale_key, False):
        scale /= float(layer + 1)
    return scale


def load(hf_dir: Path, *, max_len: int | None = None):
    """The fp32 model in ``hf_dir`` and its :class:`Plan`; :class:`StageError` for a family the graphs
    do not express (the line of :func:`lmship.families.generation_refusal`)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    family = family_for(_config_dict(model.config), max_len=max_len)
    return model, plan_of(model, family)


def plan_of(model, family: Family) -> Plan:
    """The :class:`Plan` of ``model`` read through ``family``'s traits."""
    cfg = model.config
    as_dict = _config_dict(cfg)
    heads, hidden = cfg.num_attention_heads, cfg.hidden_size
    kv_heads = (getattr(cfg, family.kv_heads_key, None) if family.kv_heads_key else None) or heads
    head_dim = (getattr(cfg, family.head_dim_key, None) if family.head_dim_key else None) or hidden // heads
    windows = tuple(layer_windows(family, as_dict))
    types = layer_types(family, as_dict)
    if family.rotary is None:
        rotary: tuple[str | None, ...] = (None,) * cfg.num_hidden_layers
    else:
        rotary = tuple("local" if family.local_rotary and t == SLIDING else "global" for t in types)
    partial = Plan(
        family, cfg.num_hidden_layers, hidden, heads, kv_heads, head_dim, cfg.vocab_size,
        float(getattr(cfg, family.eps_key)), str(getattr(cfg, family.activation_key)), windows, rotary, 0,
        tuple(_scale(family, cfg, head_dim, i) for i in range(cfg.num_hidden_layers)),
        getattr(cfg, family.final_softcap_key, None) if family.final_softcap_key else None,
        float(hidden) ** 0.5 if family.embed_scale else None,
    )  # fmt: skip
    rotary_dim = 0
    if family.rotary is not None:
        cos, _ = rotary_rows(model, partial, rotary[0] or "global", 1)
        rotary_dim = cos.shape[-1]
        if rotary_dim != head_dim and not (family.partial_rotary and rotary_dim < head_dim and rotary_dim % 2 == 0):
            raise StageError(
                f"{family.model_type}: the rotary embedding covers {rotary_dim} of {head_dim} head dims, "
                "which the family's graphs do not express"
            )
    plan = replace(partial, rotary_dim=rotary_dim)
    layers = _attr(model, f"{family.decoder}.{family.layers}", family)
    for i, layer in enumerate(layers):
        declared = getattr(_attr(layer, family.attention, family), "scaling", None)
        if declared is not None and not math.isclose(float(declared), plan.scales[i], rel_tol=1e-9):
            raise StageError(
                f"{family.model_type}: layer {i} scales attention scores by {declared}, the family's traits "
                f"by {plan.scales[i]}"
            )
    return plan


def rotary_rows(model, plan: Plan, kind: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [length, rotary_dim] of rotary ``kind`` from the model's own rotary embedding."""
    import torch

    family = plan.family
    rotary = _attr(model, f"{family.decoder}.{family.rotary}", family)
    with torch.inference_mode():
        pos = torch.arange(length).reshape(1, -1)
        x = torch.zeros(1, length, plan.head_dim)
        if family.local_rotary:
            cos, sin = rotary(x, pos, _ROTARY_LAYER_TYPE[kind])
        else:
            cos, sin = rotary(x, pos)
    return cos[0].float().numpy(), sin[0].float().numpy()


def host_rows(model, plan: Plan, max_len: int) -> dict[str, np.ndarray]:
    """The host's per-position tables [max_len, width] of every name in ``plan.io(max_len).tables``."""
    rows: dict[str, np.ndarray] = {}
    for kind, (cos_name, sin_name) in ROTARY_TABLES.items():
        if kind in plan.rotary:
            rows[cos_name], rows[sin_name] = rotary_rows(model, plan, kind, max_len)
    if plan.family.positions:
        family = plan.family
        table = _attr(model, f"{family.decoder}.{family.positions}", family).weight
        rows[POSITION_TABLE] = table[:max_len].detach().float().numpy().copy()
    return rows


# --------------------------------------------------------------------------- the weights


def _linear(module, family: Family, declared_bias: bool, what: str):
    """(weight [out, in], bias or None) of a projection, its bias checked against the family's traits."""
    weight = module.weight.detach()
    if family.conv1d:
        weight = weight.t().contiguous()
    bias = getattr(module, "bias", None)
    if (bias is not None) != declared_bias:
        raise StageError(
            f"{family.model_type}: {what} {'has' if bias is not None else 'has no'} bias, the family's traits "
            f"say {'one' if declared_bias else 'none'}"
        )
    return weight, None if bias is None else bias.detach()


def _split(weight_bias, sizes: list[int]):
    """Row blocks of a fused projection's (weight, bias), of ``sizes`` rows each."""
    weight, bias = weight_bias
    if weight.shape[0] != sum(sizes):
        raise StageError(f"a fused projection has {weight.shape[0]} output rows, expected {sum(sizes)} ({sizes})")
    edges = np.cumsum([0, *sizes])
    return [
        (weight[a:b].clone(), None if bias is None else bias[a:b].clone())
        for a, b in itertools.pairwise(int(e) for e in edges)
    ]


def _norm(module, family: Family):
    """(scale, shift or None) of a norm: the weight plus the family's offset, and a LayerNorm's bias."""
    if module is None:
        return None, None
    weight = module.weight.detach()
    if family.norm_offset:
        weight = weight + family.norm_offset
    bias = getattr(module, "bias", None) if family.norm == LAYER else None
    return weight, None if bias is None else bias.detach()


def _layer_weights(layer, plan: Plan, config: dict) -> dict:
    """Every tensor of one decoder layer under the graph's names (None where the family has none)."""
    f, d = plan.family, plan.head_dim
    att = _attr(layer, f.attention, f)
    mlp = _attr(layer, f.mlp, f)
    qkv_bias, o_bias, mlp_bias = (has_bias(b, config) for b in (f.qkv_bias, f.o_bias, f.mlp_bias))
    if f.qkv:
        sizes = [plan.heads * d, plan.kv_heads * d, plan.kv_heads * d]
        q, k, v = _split(_linear(_attr(att, f.qkv, f), f, qkv_bias, f.qkv), sizes)
    else:
        q, k, v = (_linear(_attr(att, name, f), f, qkv_bias, name) for name in (f.q, f.k, f.v))
    if f.gate_up:
        fused = _linear(_attr(mlp, f.gate_up, f), f, mlp_bias, f.gate_up)
        half = fused[0].shape[0] // 2
        gate, up = _split(fused, [half, half])
    else:
        gate = _linear(_attr(mlp, f.gate, f), f, mlp_bias, f.gate) if f.gate else (None, None)
        up = _linear(_attr(mlp, f.up, f), f, mlp_bias, f.up)
    out = {
        "q": q,
        "k": k,
        "v": v,
        "o": _linear(_attr(att, f.o, f), f, o_bias, f.o),
        "gate": gate,
        "up": up,
        "down": _linear(_attr(mlp, f.down, f), f, mlp_bias, f.down),
        "norm_in": _norm(_attr(layer, f.input_norm, f), f),
        "norm_mlp": _norm(_attr(layer, f.pre_mlp_norm, f), f),
        "norm_post_attention": _norm(_attr(layer, f.post_attention_norm, f) if f.post_attention_norm else None, f),
        "norm_post_mlp": _norm(_attr(layer, f.post_mlp_norm, f) if f.post_mlp_norm else None, f),
        "norm_q": _norm(_attr(att, f.qk_norm[0], f) if f.qk_norm else None, f),
        "norm_k": _norm(_attr(att, f.qk_norm[1], f) if f.qk_norm else None, f),
    }
    if out["q"][0].shape[0] != plan.heads * d or out["k"][0].shape[0] != plan.kv_heads * d:
        raise StageError(
            f"{f.model_type}: q/k projections have {out['q'][0].shape[0]}/{out['k'][0].shape[0]} rows, "
            f"expected {plan.heads * d}/{plan.kv_heads * d} ({plan.heads} heads, {plan.kv_heads} KV heads of {d})"
        )
    return out


def _activation(name: str):
    import torch
    from torch.nn import functional as F  # noqa: N812

    def gelu_tanh_formula(x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))

    table = {
        "silu": F.silu,
        "swish": F.silu,
        "gelu": F.gelu,
        "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_new": gelu_tanh_formula,
        "relu": F.relu,
    }
    if name not in table:
        raise StageError(f"activation {name!r} is not implemented by the generation graphs ({sorted(table)})")
    return table[name]


# --------------------------------------------------------------------------- the graphs


def _build_modules(model, plan: Plan, io: GraphIO, prompt_len: int):
    """Return (Prefill, Decode) torch modules that share ``model``'s weights, as ``plan`` reads them."""
    import torch
    from torch import nn
    from torch.nn import functional as F  # noqa: N812

    f = plan.family
    d, kv, group, rot = plan.head_dim, plan.kv_heads, plan.group, plan.rotary_dim
    act = _activation(plan.activation)
    config = _config_dict(model.config)
    base = _attr(model, f.decoder, f)

    class Weights(nn.Module):
        """The tensors of the graphs, registered once (views of the model's own where they can be)."""

        def __init__(self):
            super().__init__()
            embed = _attr(base, f.embed, f).weight.detach()
            head = _attr(model, f.head, f).weight.detach()
            self.tied = head.data_ptr() == embed.data_ptr() and head.shape == embed.shape
            self.register_buffer("embed", embed, persistent=False)
            self.register_buffer("head", None if self.tied else head, persistent=False)
            self.register_buffer("scale", None if plan.embed_scale is None else torch.tensor(plan.embed_scale))
            norm_w, norm_b = _norm(_attr(base, f.final_norm, f), f)
            self.register_buffer("final_w", norm_w, persistent=False)
            self.register_buffer("final_b", norm_b, persistent=False)
            self.layer = nn.ModuleList()
            for layer in _attr(base, f.layers, f):
                holder = nn.Module()
                for name, (w, b) in _layer_weights(layer, plan, config).items():
                    holder.register_buffer(f"{name}_w", w, persistent=False)
                    holder.register_buffer(f"{name}_b", b, persistent=False)
                self.layer.append(holder)

    weights = Weights().eval()

    def norm(x, w, b):
        if f.norm == LAYER:
            return F.layer_norm(x, (x.shape[-1],), w, b, plan.eps)
        var = x.pow(2).mean(-1, keepdim=True)
        return w * (x * torch.rsqrt(var + plan.eps))

    def linear(x, lw, name):
        return F.linear(x, getattr(lw, f"{name}_w"), getattr(lw, f"{name}_b"))

    def per_head_norm(x, lw, name):  # x [rows, n*d]: each head's d values normed alone
        if getattr(lw, f"{name}_w") is None:
            return x
        rows = x.shape[0]
        return norm(x.reshape(-1, d), getattr(lw, f"{name}_w"), None).reshape(rows, -1)

    def rope(x, cos, sin):  # x [rows, d], cos/sin [rows or 1, rot]
        if cos is None:
            return x
        part = x[:, :rot] if rot < d else x
        half = rot // 2
        rotated = torch.cat((-part[:, half:], part[:, :half]), dim=1)
        turned = part * cos + rotated * sin
        return turned if rot == d else torch.cat((turned, x[:, rot:]), dim=1)

    def embed(ids, rows):
        x = F.embedding(ids, weights.embed)
        if weights.scale is not None:
            x = x * weights.scale
        if f.positions:
            x = x + rows[POSITION_TABLE]
        return x

    def projections(lw, x):
        h = norm(x, lw.norm_in_w, lw.norm_in_b)
        q = per_head_norm(linear(h, lw, "q"), lw, "norm_q")
        k = per_head_norm(linear(h, lw, "k"), lw, "norm_k")
        return q, k, linear(h, lw, "v")

    def finish(lw, x, attended):
        out = linear(attended, lw, "o")
        if lw.norm_post_attention_w is not None:
            out = norm(out, lw.norm_post_attention_w, lw.norm_post_attention_b)
        x = x + out
        h = norm(x, lw.norm_mlp_w, lw.norm_mlp_b)
        up = linear(h, lw, "up")
        inner = act(linear(h, lw, "gate")) * up if lw.gate_w is not None else act(up)
        out = linear(inner, lw, "down")
        if lw.norm_post_mlp_w is not None:
            out = norm(out, lw.norm_post_mlp_w, lw.norm_post_mlp_b)
        return x + out

    def logits_of(x):
        logits = F.linear(norm(x, weights.final_w, weights.final_b), weights.embed if weights.tied else weights.head)
        if plan.softcap:
            logits = torch.tanh(logits / plan.softcap) * plan.softcap
        return logits

    def cos_sin(rows, layer):
        kind = plan.rotary[layer]
        if kind is None:
            return None, None
        cos_name, sin_name = ROTARY_TABLES[kind]
        return rows[cos_name], rows[sin_name]

    def prefill_mask(p: int, window: int | None):
        i = torch.arange(p).reshape(-1, 1)
        j = torch.arange(p).reshape(1, -1)
        blocked = j > i
        if window:
            blocked = blocked | (i - j >= window)
        mask = torch.where(blocked, torch.tensor(MASK_NEG), torch.tensor(0.0)).float()
        return mask.repeat(group, 1)  # [group*P, P]

    table_names, mask_names = io.table_names, io.mask_names

    class Prefill(nn.Module):
        def __init__(self):
            super().__init__()
            self.weights = weights
            for window in sorted({w or 0 for w in plan.windows}):
                self.register_buffer(f"mask_{window}", prefill_mask(prompt_len, window or None), persistent=False)

        def forward(self, input_ids, *tables):
            rows = dict(zip(table_names, tables, strict=True))
            p = input_ids.shape[1]
            x = embed(input_ids.reshape(-1), rows)  # [P, H]
            ks, vs = [], []
            for i, lw in enumerate(weights.layer):
                cos, sin = cos_sin(rows, i)
                mask = getattr(self, f"mask_{plan.windows[i] or 0}")
                q, k, v = projections(lw, x)  # [P, heads*d], [P, kv*d], [P, kv*d]
                outs = [None] * plan.heads
                k_rows, v_rows = [], []
                for j in range(kv):
                    kj = rope(k[:, j * d : (j + 1) * d], cos, sin)  # [P, d]
                    vj = v[:, j * d : (j + 1) * d]
                    qj = torch.cat(
                        [rope(q[:, h_ * d : (h_ + 1) * d], cos, sin) for h_ in range(j * group, (j + 1) * group)],
                        dim=0,
                    )  # [group*P, d]
                    w = torch.softmax(qj @ kj.transpose(0, 1) * plan.scales[i] + mask, dim=-1)
                    o = w @ vj  # [group*P, d]
                    for g in range(group):
                        outs[j * group + g] = o[g * p : (g + 1) * p]
                    k_rows.append(kj)
                    v_rows.append(vj)
                x = finish(lw, x, torch.cat(outs, dim=1))
                ks.append(torch.cat(k_rows, dim=0))  # [kv*P, d]
                vs.append(torch.cat(v_rows, dim=0))
            logits = logits_of(x[p - 1 : p])
            return (logits, *[t for pair in zip(ks, vs, strict=True) for t in pair])

    class Decode(nn.Module):
        def __init__(self):
            super().__init__()
            self.weights = weights

        def forward(self, token, *inputs):
            n_tables, n_masks = len(table_names), len(mask_names)
            rows = dict(zip(table_names, inputs[:n_tables], strict=True))
            masks = dict(zip(mask_names, inputs[n_tables : n_tables + n_masks], strict=True))
            caches = inputs[n_tables + n_masks :]
            x = embed(token.reshape(-1), rows)  # [1, H]
            new = []
            for i, lw in enumerate(weights.layer):
                k_cache, v_cache = caches[2 * i], caches[2 * i + 1]  # [kv*S, d]
                slots = k_cache.shape[0] // kv
                mask = masks[io.mask_for(slots)]  # [1, S+1]
                cos, sin = cos_sin(rows, i)
                q, k, v = projections(lw, x)
                q = rope(q.reshape(plan.heads, d), cos, sin)  # [heads, d]
                k = rope(k.reshape(kv, d), cos, sin)  # [kv, d]
                v = v.reshape(kv, d)
                outs = []
                for j in range(kv):
                    kj = torch.cat((k_cache[j * slots : (j + 1) * slots], k[j : j + 1]), dim=0)  # [S+1, d]
                    vj = torch.cat((v_cache[j * slots : (j + 1) * slots], v[j : j + 1]), dim=0)
                    qj = q[j * group : (j + 1) * group]  # [group, d]
                    w = torch.softmax(qj @ kj.transpose(0, 1) * plan.scales[i] + mask, dim=-1)  # [group, S+1]
                    outs.append(w @ vj)
                x = finish(lw, x, torch.cat(outs, dim=0).reshape(1, plan.heads * d))
                new += [k, v]
            return (logits_of(x), *new)

    return Prefill().eval(), Decode().eval()


def graph_modules(hf_dir: Path, *, prompt_len: int, max_len: int):
    """({'prefill': module, 'decode': module}, :class:`GraphIO`, model) of the model in ``hf_dir``."""
    model, plan = load(Path(hf_dir), max_len=max_len)
    check_lengths(prompt_len, max_len, getattr(model.config, "max_position_embeddings", None))
    io = plan.io(max_len)
    prefill, decode = _build_modules(model, plan, io, prompt_len)
    return {"prefill": prefill, "decode": decode}, io, model


def check_lengths(prompt_len: int, max_len: int, max_positions: int | None) -> None:
    if prompt_len < 1 or max_len < 2:
        raise StageError(f"prompt_len ({prompt_len}) must be >= 1 and max_len ({max_len}) >= 2")
    if prompt_len >= max_len:
        raise StageError(f"prompt_len ({prompt_len}) must be smaller than max_len ({max_len}) to leave room to decode")
    if max_positions and max_len > max_positions:
        raise StageError(f"max_len {max_len} exceeds the model's max_position_embeddings {max_positions}")


def example_inputs(graph: str, io: GraphIO, prompt_len: int) -> tuple[np.ndarray, ...]:
    """Example inputs of ``graph`` in :meth:`GraphIO.names` order (cos rows 1, other rows 0, empty caches)."""
    rows = prompt_len if graph == "prefill" else 1
    tables = [np.full((rows, w), 1.0 if name.startswith("cos") else 0.0, np.float32) for name, w in io.tables]
    if graph == "prefill":
        return (np.zeros((1, prompt_len), np.int64), *tables)
    if graph != "decode":
        raise StageError(f"unknown generation graph {graph!r}; expected one of {GRAPHS}")
    masks = []
    for _, slots in io.masks:
        mask = np.full((1, slots + 1), MASK_NEG, np.float32)
        mask[0, -1] = 0.0
        masks.append(mask)
    caches = [np.zeros((io.kv_heads * s, io.head_dim), np.float32) for s in io.kv_slots]
    return (np.zeros((1, 1), np.int64), *tables, *masks, *caches)


def export_generation_graph(
    hf_dir: Path,
    out_onnx: Path,
    *,
    graph: str,
    prompt_len: int,
    max_len: int,
    opset: int = 18,
) -> Path:
    """Export the ``graph`` ('prefill' | 'decode') of ``hf_dir`` to an ONNX model (its weights in
    ``<name>.data`` beside it when they pass the 2 GB of one protobuf).

    ``prompt_len`` (P) fixes the prefill graph's length, ``max_len`` (L) the decode
    graph's cache slots. Check the result with :func:`lmship.generate.validate_graph`.
    """
    import onnx
    import torch

    if graph not in GRAPHS:
        raise StageError(f"unknown generation graph {graph!r}; expected one of {GRAPHS}")
    modules, io, _ = graph_modules(Path(hf_dir), prompt_len=prompt_len, max_len=max_len)
    inputs, outputs = io.names(graph)
    args = tuple(torch.from_numpy(a) for a in example_inputs(graph, io, prompt_len))
    started = time.monotonic()
    module = modules[graph]
    external = external_data_needed(sum(t.numel() * t.element_size() for t in module.state_dict().values()))
    with atomic_onnx(Path(out_onnx)) as tmp:
        try:
            program = dynamo_export.export(module, args, opset=opset, input_names=inputs, output_names=outputs)
        except Exception as exc:
            raise StageError(
                f"ONNX export of the {graph} graph of {hf_dir} failed (torch {torch.__version__}): "
                f"{type(exc).__name__}: {str(exc)[:2000]}"
            ) from exc
        program.save(str(tmp), external_data=external)
        del program
        onnx.checker.check_model(str(tmp), full_check=False)
        written = onnx.load(str(tmp), load_external_data=False)
        got_in = [i.name for i in written.graph.input]
        got_out = [o.name for o in written.graph.output]
        if got_in != inputs or got_out != outputs:
            raise StageError(
                f"the exported {graph} graph has inputs {got_in[:6]}... / outputs {got_out[:6]}...; "
                f"expected {inputs[:6]}... / {outputs[:6]}..."
            )
        scatter = [n.op_type for n in written.graph.node if n.op_type.startswith("Scatter")]
        if scatter:
            raise StageError(f"the {graph} graph contains {scatter}: the cache must be updated on the host")
    log.info(
        "%s graph exported to %s in %.1f s (%.1f MB, peak RSS %.0f MB)",
        graph,
        out_onnx,
        time.monotonic() - started,
        size_bytes(out_onnx) / 1e6,
        peak_rss_mb(),
    )
    return Path(out_onnx)


def gemm_to_matmul(in_onnx: Path, out_onnx: Path) -> int:
    """Rewrite ``Gemm`` by a constant weight into ``MatMul`` (+ ``Add`` for a bias).

    The exporter emits Gemm for 2-D activations; ORT's MatMulNBits quantizer
    and :mod:`lmship.exact_grid` only take MatMul. ``transB`` weights are stored
    transposed ([in, out]), so GGUF blocks run along MatMul's K axis. Returns the
    number of rewritten nodes; ``out_onnx`` is written only when it is not 0.
    """
    import onnx
    from onnx import helper, numpy_helper

    from .files import load_onnx

    model = load_onnx(in_onnx)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}

    def rewritable(node) -> bool:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        return not (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or (len(node.input) > 2 and node.input[2] and attrs.get("beta", 1.0) != 1.0)
        )

    # A weight read only as the transB weight of rewritten Gemms is freed once transposed (no second copy
    # of a model's weights); one read elsewhere too (a tied embedding's Gather) is kept.
    readers: dict[str, set[bool]] = {}
    for node in graph.node:
        trans_b = rewritable(node) and any(a.name == "transB" and a.i for a in node.attribute)
        for i, name in enumerate(node.input):
            if name in inits:
                readers.setdefault(name, set()).add(trans_b and i == 1)
    transposed: dict[str, str] = {}
    nodes, rewritten = [], 0
    for node in graph.node:
        if not rewritable(node):
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = node.input[1]
        if attrs.get("transB", 0):
            if weight not in transposed:
                name = weight + "_kn"
                graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[weight]).T.copy(), name))
                if readers[weight] == {True}:
                    inits[weight].ClearField("raw_data")  # no reader left: free it now, not after the loop
                transposed[weight] = name
            weight = transposed[weight]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        out = node.output[0]
        mm_out = out + "_mm" if bias else out
        nodes.append(helper.make_node("MatMul", [node.input[0], weight], [mm_out], name=node.name + "_matmul"))
        if bias:
            nodes.append(helper.make_node("Add", [mm_out, bias], [out], name=node.name + "_bias"))
        rewritten += 1
    if not rewritten:
        return 0
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    with atomic_onnx(Path(out_onnx)) as tmp:
        save_onnx(model, tmp)
        del model
        onnx.checker.check_model(str(tmp), full_check=False)
    log.info("%s: %d Gemm -> MatMul", out_onnx, rewritten)
    return rewritten
