"""Model families: the traits of each decoder architecture that the generation graphs read.

One frozen :class:`Family` per Hugging Face ``model_type``, registered with :func:`register`.
A family declares *which* mechanisms its decoder uses (q/k norms, the norm kind and weight
offset, an embedding scale, fused projections, biases, sandwich norms, sliding-window layers,
a second rotary base, learned positions, logit softcapping) and *where* the weights live
(attribute names on transformers' module tree). The values those mechanisms need (epsilon,
window size, rotary fraction, softcap, ...) are read from the model's config by
:mod:`lmship.decode_graph`, which writes the graphs once for every family.

A model whose family is not registered, or whose config asks for something the graphs do not
express, is refused for generation only (:func:`generation_refusal`): its forward rows are
still built. Standard library only: the Snakefile imports this module while it parses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import StageError

RMS, LAYER = "rms", "layer"
#: How a family's layers choose their attention window: never, per ``config.layer_types``, or
#: every layer whenever ``config.sliding_window`` is set.
NO_WINDOW, PER_LAYER_TYPE, EVERY_LAYER = "none", "layer_types", "all"
FULL, SLIDING = "full_attention", "sliding_attention"
#: Activations the graphs implement (transformers' ACT2FN names).
ACTIVATIONS = ("silu", "swish", "gelu", "gelu_pytorch_tanh", "gelu_new", "relu")
#: Rotary types whose cos/sin rows depend on the position only: the host's table is exact.
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
#: Rotary types that switch frequencies with the sequence length: exact while the cache fits
#: below the length they switch at.
LENGTH_DEPENDENT_ROPE = {"dynamic": "max_position_embeddings", "longrope": "original_max_position_embeddings"}


@dataclass(frozen=True)
class Family:
    """The declared traits of one decoder architecture (see the module docstring).

    Attribute names are paths on the loaded ``AutoModelForCausalLM`` module: ``decoder`` under
    the model, ``embed`` / ``positions`` / ``layers`` / ``final_norm`` / ``rotary`` under the
    decoder, the projections and norms under one layer. A bias trait is a bool or the config key
    that says whether the bias exists.
    """

    model_type: str
    architectures: tuple[str, ...]
    # where the weights live
    decoder: str = "model"
    embed: str = "embed_tokens"
    positions: str | None = None  # learned absolute position embedding (GPT-2's wpe)
    layers: str = "layers"
    final_norm: str = "norm"
    head: str = "lm_head"
    rotary: str | None = "rotary_emb"  # None: no rotary embedding
    attention: str = "self_attn"
    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    qkv: str | None = None  # one fused [q | k | v] projection instead of q, k, v
    o: str = "o_proj"
    mlp: str = "mlp"
    gate: str | None = "gate_proj"  # None with gate_up None: a plain MLP, down(act(up(x)))
    up: str = "up_proj"
    gate_up: str | None = None  # one fused [gate | up] projection instead of gate, up
    down: str = "down_proj"
    conv1d: bool = False  # projection weights stored [in, out] (GPT-2's Conv1D)
    # norms
    norm: str = RMS
    norm_offset: float = 0.0  # the norm multiplies by (offset + weight): Gemma stores w - 1
    eps_key: str = "rms_norm_eps"
    input_norm: str = "input_layernorm"
    pre_mlp_norm: str = "post_attention_layernorm"
    post_attention_norm: str | None = None  # on the attention output, before the residual add
    post_mlp_norm: str | None = None  # on the MLP output, before the residual add
    qk_norm: tuple[str, str] | None = None  # per-head norms of q and k, before the rotation
    # scalars and sizes
    embed_scale: bool = False  # embeddings times sqrt(hidden_size)
    activation_key: str = "hidden_act"
    head_dim_key: str | None = "head_dim"  # None: hidden_size // heads
    kv_heads_key: str | None = "num_key_value_heads"  # None: as many KV heads as query heads
    query_scale_key: str | None = None  # scores scaled by config[key] ** -0.5 instead of head_dim ** -0.5
    scaled_key: str | None = None  # config flag: scores scaled at all (GPT-2's scale_attn_weights)
    inverse_layer_scale_key: str | None = None  # config flag: scores also divided by layer index + 1
    final_softcap_key: str | None = None  # logits = c * tanh(logits / c) with c = config[key]
    # biases
    qkv_bias: bool | str = False
    o_bias: bool | str = False
    mlp_bias: bool | str = False
    # attention pattern and positions
    window: str = NO_WINDOW
    local_rotary: bool = False  # sliding layers rotate with their own base: rotary(x, pos, layer_type)
    partial_rotary: bool = False  # the rotation may cover a leading part of head_dim only


REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to :data:`REGISTRY` under its ``model_type`` (once)."""
    if family.model_type in REGISTRY:
        raise ValueError(f"model_type {family.model_type!r} is registered twice")
    REGISTRY[family.model_type] = family
    return family


LLAMA = register(
    Family("llama", ("LlamaForCausalLM",), qkv_bias="attention_bias", o_bias="attention_bias", mlp_bias="mlp_bias")
)
MISTRAL = register(Family("mistral", ("MistralForCausalLM",), window=EVERY_LAYER))
QWEN2 = register(Family("qwen2", ("Qwen2ForCausalLM",), qkv_bias=True, window=PER_LAYER_TYPE))
QWEN3 = register(
    Family(
        "qwen3",
        ("Qwen3ForCausalLM",),
        qk_norm=("q_norm", "k_norm"),
        qkv_bias="attention_bias",
        o_bias="attention_bias",
        window=PER_LAYER_TYPE,
    )
)
GEMMA3_TEXT = register(
    Family(
        "gemma3_text",
        ("Gemma3ForCausalLM",),
        norm_offset=1.0,
        post_attention_norm="post_attention_layernorm",
        pre_mlp_norm="pre_feedforward_layernorm",
        post_mlp_norm="post_feedforward_layernorm",
        qk_norm=("q_norm", "k_norm"),
        embed_scale=True,
        activation_key="hidden_activation",
        query_scale_key="query_pre_attn_scalar",
        final_softcap_key="final_logit_softcapping",
        qkv_bias="attention_bias",
        o_bias="attention_bias",
        window=PER_LAYER_TYPE,
        local_rotary=True,
    )
)
PHI3 = register(
    Family(
        "phi3",
        ("Phi3ForCausalLM",),
        qkv="qkv_proj",
        gate=None,
        gate_up="gate_up_proj",
        window=EVERY_LAYER,
        partial_rotary=True,
    )
)
GPT2 = register(
    Family(
        "gpt2",
        ("GPT2LMHeadModel",),
        decoder="transformer",
        embed="wte",
        positions="wpe",
        layers="h",
        final_norm="ln_f",
        rotary=None,
        attention="attn",
        qkv="c_attn",
        o="c_proj",
        gate=None,
        up="c_fc",
        down="c_proj",
        conv1d=True,
        norm=LAYER,
        eps_key="layer_norm_epsilon",
        input_norm="ln_1",
        pre_mlp_norm="ln_2",
        activation_key="activation_function",
        head_dim_key=None,
        kv_heads_key=None,
        scaled_key="scale_attn_weights",
        inverse_layer_scale_key="scale_attn_by_inverse_layer_idx",
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
    )
)


# --------------------------------------------------------------------------- reading a config


def has_bias(family_value: bool | str, config: Mapping[str, Any]) -> bool:
    """A bias trait resolved against ``config`` (a bool, or the config key that holds it)."""
    return bool(config.get(family_value, False)) if isinstance(family_value, str) else bool(family_value)


def layer_windows(family: Family, config: Mapping[str, Any]) -> list[int | None]:
    """The attention window of every layer (None: the whole cache), from ``config``."""
    layers = int(config["num_hidden_layers"])
    window = config.get("sliding_window")
    if family.window == EVERY_LAYER:
        return [int(window) if window else None] * layers
    if family.window == PER_LAYER_TYPE:
        types = layer_types(family, config)
        return [int(window) if t == SLIDING and window else None for t in types]
    return [None] * layers


def layer_types(family: Family, config: Mapping[str, Any]) -> list[str]:
    """``config.layer_types`` (every layer full attention when the config has none)."""
    types = config.get("layer_types") if family.window == PER_LAYER_TYPE else None
    return list(types) if types else [FULL] * int(config["num_hidden_layers"])


def _rope_entries(config: Mapping[str, Any]) -> list[tuple[dict, str]]:
    """Each rotary parameter set of ``config`` with what it applies to (one set, or one per layer type)."""
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if params and all(isinstance(v, Mapping) for v in params.values()):
        return [(dict(v), k) for k, v in params.items()]
    return [(dict(params), "all layers")]


def _heads(family: Family, config: Mapping[str, Any]) -> tuple[int, int]:
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 0)
    kv = int(config.get(family.kv_heads_key) or heads) if family.kv_heads_key else heads
    return heads, kv


def _config_problems(family: Family, config: Mapping[str, Any], max_len: int | None) -> list[str]:
    """What in ``config`` the generation graphs of ``family`` do not express (empty: nothing)."""
    problems = []
    heads, kv = _heads(family, config)
    if heads < 1 or kv < 1 or heads % kv:
        problems.append(f"{heads} attention heads are not a multiple of {kv} KV heads")
    activation = config.get(family.activation_key)
    if activation is not None and activation not in ACTIVATIONS:
        problems.append(f"activation {family.activation_key}={activation!r} (the graphs have {', '.join(ACTIVATIONS)})")
    if family.window == PER_LAYER_TYPE and config.get("layer_types"):
        unknown = sorted({t for t in config["layer_types"] if t not in (FULL, SLIDING)})
        if unknown:
            problems.append(f"layer types {unknown} (the graphs have {FULL} and {SLIDING})")
    window = config.get("sliding_window")
    if family.window != NO_WINDOW and window is not None and int(window) < 2:
        problems.append(f"sliding_window={window} (at least 2: the token and one cached position)")
    if config.get("use_bidirectional_attention"):
        problems.append("use_bidirectional_attention=True (the graphs are causal)")
    if config.get("add_cross_attention"):
        problems.append("add_cross_attention=True (the graphs have self-attention only)")
    if family.rotary is not None:
        for params, applies_to in _rope_entries(config):
            kind = params.get("rope_type", params.get("type", "default"))
            fraction = float(params.get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)) or 1.0)
            if fraction < 1.0 and not family.partial_rotary:
                problems.append(f"partial_rotary_factor={fraction} ({family.model_type} rotates the whole head)")
            if kind in STATIC_ROPE:
                continue
            limit_key = LENGTH_DEPENDENT_ROPE.get(kind)
            limit = config.get(limit_key) if limit_key else None
            if limit_key is None:
                problems.append(f"rope_type {kind!r} for {applies_to} (the host tables have {', '.join(STATIC_ROPE)})")
            elif max_len is not None and limit is not None and max_len > int(limit):
                problems.append(
                    f"rope_type {kind!r} switches frequencies beyond {limit_key}={limit}, below the cache's "
                    f"max_len={max_len} (lower generation.max_len)"
                )
    return problems


def generation_refusal(config: Mapping[str, Any], *, max_len: int | None = None) -> str | None:
    """Why the generation graphs are not built for the model of ``config`` (its config.json as a
    dict), in one line naming the family; None when they are. The forward rows do not depend on it."""
    model_type = config.get("model_type")
    archs = ", ".join(config.get("architectures") or []) or "no architectures listed"
    family = REGISTRY.get(str(model_type))
    if family is None:
        registered = ", ".join(sorted(REGISTRY))
        return (
            f"model_type {model_type!r} ({archs}) has no registered family (registered: {registered}): "
            "no generation graphs for it; its forward rows are still built"
        )
    problems = _config_problems(family, config, max_len)
    if problems:
        return (
            f"the {family.model_type} generation graphs do not express {'; '.join(problems)}: "
            "no generation graphs for this model; its forward rows are still built"
        )
    return None


def family_for(config: Mapping[str, Any], *, max_len: int | None = None) -> Family:
    """The registered family of ``config``; :class:`StageError` with :func:`generation_refusal`'s line if refused."""
    why = generation_refusal(config, max_len=max_len)
    if why:
        raise StageError(why)
    return REGISTRY[config["model_type"]]


def is_causal_lm_architecture(name: str) -> bool:
    """Whether ``name`` is an architecture that ``AutoModelForCausalLM`` loads as a causal LM:
    transformers' ``*ForCausalLM`` and ``*LMHeadModel`` classes and every registered family's."""
    return name.endswith(("ForCausalLM", "LMHeadModel")) or any(name in f.architectures for f in REGISTRY.values())
