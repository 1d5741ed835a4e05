"""Generation graphs of a Llama-style causal LM: a prefill graph and a decode-step graph.

Both graphs are static-shape, batch 1, and keep every tensor at rank <= 2
(onnx2tf transposes 4-D tensors, and rank-2 inputs need no layout flags):

``prefill``  inputs ``input_ids`` [1, P] int64, ``cos``/``sin`` [P, head_dim];
             outputs ``logits`` [1, vocab] (last position only), then per layer
             ``k{i}``, ``v{i}`` [kv_heads*P, head_dim] (rows ordered kv head, position).
``decode``   inputs ``token`` [1, 1] int64, ``cos``/``sin`` [1, head_dim] (the rows of
             the token's position), ``mask`` [1, L+1] (0 for filled cache slots,
             ``MASK_NEG`` for empty ones, last entry = the new token itself), then per layer
             ``k{i}``, ``v{i}`` [kv_heads*L, head_dim]; outputs ``logits`` [1, vocab], then per
             layer ``new_k{i}``, ``new_v{i}`` [kv_heads, head_dim].

The token's position enters only through the cos/sin rows, which the host takes
from a table written by :func:`write_host_tables` (the model's own rotary
embedding, attention scaling included). The host writes a step's new K/V into
slot ``p`` of the cache (``cache.reshape(kv_heads, L, head_dim)[:, p] = new``);
nothing is scattered inside the graph. Grouped-query attention stacks the query
heads that share a KV head as rows ([group*rows, head_dim] against K^T), so no
KV head is repeated (no Expand/Tile) and no 4-D tensor appears.

The module also holds the conversion steps that differ for these multi-input graphs
(onnxsim without the forward check, Gemm -> MatMul before the ONNX Runtime quantisers,
onnx2tf SavedModel with named inputs and outputs); :mod:`lmship.generation_stages`
wraps them as the workflow's stages with their checks against PyTorch.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import StageError, dynamo_export
from .files import atomic_output, size_bytes
from .logs import peak_rss_mb

log = logging.getLogger(__name__)

GRAPHS = ("prefill", "decode")
#: The {graph} wildcard of the conversion rules: the forward pass (``seq``) and the generation graphs.
GRAPH_FAMILIES = ("seq", *GRAPHS)
#: Runtimes that generate text (PyTorch with its own KV cache; ORT, TFLite and OpenVINO with these graphs).
GENERATION_RUNTIMES = ("pytorch", "ort", "tflite", "openvino", "openvino_bf16")


def generates(backend: str) -> bool:
    """Whether ``backend`` generates text: its runtime runs the generation graphs (PyTorch: its own
    cache) and its artifact needs no forward-pass calibration (data-aware NNCF compressions calibrate
    on forward windows, so they stay forward-only)."""
    from .backends import BACKENDS
    from .openvino import needs_calibration

    b = BACKENDS[backend]
    compression = b.wildcards.get("compression")
    return b.runtime in GENERATION_RUNTIMES and not (compression and needs_calibration(compression))


MASK_NEG = -1e4  # additive mask for empty cache slots and future prompt positions
SIGNATURE = "serving_default"


def _llama_parts(hf_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    cfg = model.config
    if cfg.model_type not in ("llama",):
        log.warning("generation graphs are written for Llama-style decoders; %s may not match", cfg.model_type)
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    if heads % kv_heads:
        raise StageError(f"{hf_dir}: {heads} attention heads are not a multiple of {kv_heads} KV heads")
    for name in ("attention_bias", "mlp_bias"):
        if getattr(cfg, name, False):
            raise StageError(f"{hf_dir}: {name}=True is not supported by the generation graphs")
    return model


def model_dims(model) -> dict[str, int]:
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "layers": cfg.num_hidden_layers,
        "heads": cfg.num_attention_heads,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": head_dim,
        "vocab": cfg.vocab_size,
    }


def _build_modules(model):
    """Return (Prefill, Decode) torch modules that share ``model``'s weights."""
    import torch
    from torch import nn

    dims = model_dims(model)
    heads, kv_heads, d = dims["heads"], dims["kv_heads"], dims["head_dim"]
    group = heads // kv_heads
    half = d // 2
    scale = d**-0.5
    inner = model.model

    def rms(norm, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return norm.weight * (x * torch.rsqrt(var + norm.variance_epsilon))

    def rope(x, cos, sin):  # x [rows, d], cos/sin [rows or 1, d]
        rotated = torch.cat((-x[:, half:], x[:, :half]), dim=1)
        return x * cos + rotated * sin

    def mlp(layer, x):
        m = layer.mlp
        return m.down_proj(m.act_fn(m.gate_proj(x)) * m.up_proj(x))

    def head_out(x):
        return model.lm_head(rms(inner.norm, x))

    class Prefill(nn.Module):
        def forward(self, input_ids, cos, sin):
            p = input_ids.shape[1]
            x = inner.embed_tokens(input_ids.reshape(-1))  # [P, H]
            causal = torch.triu(torch.full((p, p), MASK_NEG, dtype=torch.float32), diagonal=1)
            causal = causal.repeat(group, 1)  # [group*P, P]
            ks, vs = [], []
            for layer in inner.layers:
                att = layer.self_attn
                h = rms(layer.input_layernorm, x)
                q, k, v = att.q_proj(h), att.k_proj(h), att.v_proj(h)  # [P, heads*d], [P, kv*d]
                outs = [None] * heads
                k_rows, v_rows = [], []
                for j in range(kv_heads):
                    kj = rope(k[:, j * d : (j + 1) * d], cos, sin)  # [P, d]
                    vj = v[:, j * d : (j + 1) * d]
                    qj = torch.cat(
                        [rope(q[:, h_ * d : (h_ + 1) * d], cos, sin) for h_ in range(j * group, (j + 1) * group)],
                        dim=0,
                    )  # [group*P, d]
                    w = torch.softmax(qj @ kj.transpose(0, 1) * scale + causal, dim=-1)
                    o = w @ vj  # [group*P, d]
                    for g in range(group):
                        outs[j * group + g] = o[g * p : (g + 1) * p]
                    k_rows.append(kj)
                    v_rows.append(vj)
                x = x + att.o_proj(torch.cat(outs, dim=1))
                x = x + mlp(layer, rms(layer.post_attention_layernorm, x))
                ks.append(torch.cat(k_rows, dim=0))  # [kv*P, d]
                vs.append(torch.cat(v_rows, dim=0))
            logits = head_out(x[p - 1 : p])
            return (logits, *[t for pair in zip(ks, vs, strict=True) for t in pair])

    class Decode(nn.Module):
        def forward(self, token, cos, sin, mask, *caches):
            x = inner.embed_tokens(token.reshape(-1))  # [1, H]
            new = []
            for i, layer in enumerate(inner.layers):
                att = layer.self_attn
                k_cache, v_cache = caches[2 * i], caches[2 * i + 1]  # [kv*L, d]
                slots = k_cache.shape[0] // kv_heads
                h = rms(layer.input_layernorm, x)
                q = rope(att.q_proj(h).reshape(heads, d), cos, sin)  # [heads, d]
                k = rope(att.k_proj(h).reshape(kv_heads, d), cos, sin)  # [kv, d]
                v = att.v_proj(h).reshape(kv_heads, d)
                outs = []
                for j in range(kv_heads):
                    kj = torch.cat((k_cache[j * slots : (j + 1) * slots], k[j : j + 1]), dim=0)  # [L+1, d]
                    vj = torch.cat((v_cache[j * slots : (j + 1) * slots], v[j : j + 1]), dim=0)
                    qj = q[j * group : (j + 1) * group]  # [group, d]
                    w = torch.softmax(qj @ kj.transpose(0, 1) * scale + mask, dim=-1)  # [group, L+1]
                    outs.append(w @ vj)
                x = x + att.o_proj(torch.cat(outs, dim=0).reshape(1, heads * d))
                x = x + mlp(layer, rms(layer.post_attention_layernorm, x))
                new += [k, v]
            return (head_out(x), *new)

    return Prefill().eval(), Decode().eval()


def io_names(graph: str, layers: int) -> tuple[list[str], list[str]]:
    """Input and output names of ``graph`` for a model of ``layers`` layers."""
    kv = [f"{c}{i}" for i in range(layers) for c in ("k", "v")]
    if graph == "prefill":
        return ["input_ids", "cos", "sin"], ["logits", *kv]
    if graph == "decode":
        return ["token", "cos", "sin", "mask", *kv], ["logits", *[f"new_{n}" for n in kv]]
    raise StageError(f"unknown generation graph {graph!r}; expected one of {GRAPHS}")


def rope_table(model, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [max_len, head_dim] from the model's own rotary embedding."""
    import torch

    d = model_dims(model)["head_dim"]
    with torch.inference_mode():
        pos = torch.arange(max_len).reshape(1, -1)
        cos, sin = model.model.rotary_emb(torch.zeros(1, max_len, d), pos)
    return cos[0].float().numpy(), sin[0].float().numpy()


def _check_lengths(prompt_len: int, max_len: int, max_positions: int | None) -> None:
    if prompt_len < 1 or max_len < 2:
        raise StageError(f"prompt_len ({prompt_len}) must be >= 1 and max_len ({max_len}) >= 2")
    if prompt_len >= max_len:
        raise StageError(f"prompt_len ({prompt_len}) must be smaller than max_len ({max_len}) to leave room to decode")
    if max_positions and max_len > max_positions:
        raise StageError(f"max_len {max_len} exceeds the model's max_position_embeddings {max_positions}")


def example_inputs(graph: str, dims: dict[str, int], prompt_len: int, max_len: int) -> tuple[np.ndarray, ...]:
    """Zero-valued example inputs of ``graph`` in :func:`io_names` order."""
    d, kv = dims["head_dim"], dims["kv_heads"]
    if graph == "prefill":
        return (
            np.zeros((1, prompt_len), np.int64),
            np.ones((prompt_len, d), np.float32),
            np.zeros((prompt_len, d), np.float32),
        )
    cache = [np.zeros((kv * max_len, d), np.float32) for _ in range(2 * dims["layers"])]
    mask = np.full((1, max_len + 1), MASK_NEG, np.float32)
    mask[0, -1] = 0.0
    return (np.zeros((1, 1), np.int64), np.ones((1, d), np.float32), np.zeros((1, d), np.float32), mask, *cache)


def export_generation_graph(
    hf_dir: Path,
    out_onnx: Path,
    *,
    graph: str,
    prompt_len: int,
    max_len: int,
    opset: int = 18,
) -> Path:
    """Export the ``graph`` ('prefill' | 'decode') of ``hf_dir`` to a single-file ONNX model.

    ``prompt_len`` (P) fixes the prefill graph's length, ``max_len`` (L) the decode
    graph's cache slots. Check the result with :func:`lmship.generation.validate_graph`.
    """
    import onnx
    import torch

    if graph not in GRAPHS:
        raise StageError(f"unknown generation graph {graph!r}; expected one of {GRAPHS}")
    model = _llama_parts(Path(hf_dir))
    _check_lengths(prompt_len, max_len, getattr(model.config, "max_position_embeddings", None))
    dims = model_dims(model)
    prefill, decode = _build_modules(model)
    module = prefill if graph == "prefill" else decode
    inputs, outputs = io_names(graph, dims["layers"])
    args = tuple(torch.from_numpy(a) for a in example_inputs(graph, dims, prompt_len, max_len))
    started = time.monotonic()
    with atomic_output(Path(out_onnx)) as tmp:
        tmp_onnx = tmp.with_suffix(".onnx")
        try:
            program = dynamo_export.export(module, args, opset=opset, input_names=inputs, output_names=outputs)
        except Exception as exc:
            raise StageError(
                f"ONNX export of the {graph} graph of {hf_dir} failed (torch {torch.__version__}): "
                f"{type(exc).__name__}: {str(exc)[:2000]}"
            ) from exc
        program.save(str(tmp_onnx), external_data=False)
        tmp_onnx.rename(tmp)
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


def write_host_tables(hf_dir: Path, out_npz: Path, *, prompt_len: int, max_len: int) -> Path:
    """Write what the host loop needs besides the graphs: RoPE rows and the model's dimensions."""
    model = _llama_parts(Path(hf_dir))
    _check_lengths(prompt_len, max_len, getattr(model.config, "max_position_embeddings", None))
    cos, sin = rope_table(model, max_len)
    dims = model_dims(model)
    eos = model.config.eos_token_id
    with atomic_output(Path(out_npz)) as tmp, open(tmp, "wb") as fh:
        np.savez(
            fh,
            cos=cos,
            sin=sin,
            prompt_len=prompt_len,
            max_len=max_len,
            mask_neg=np.float32(MASK_NEG),
            eos=-1 if eos is None else np.asarray(eos).reshape(-1)[0],
            **dims,
        )
    return Path(out_npz)


def simplify_graph(in_onnx: Path, out_onnx: Path) -> Path:
    """onnxsim on a generation graph (check it afterwards with ``validate_graph``)."""
    import onnx
    import onnxsim

    from .files import load_onnx

    model = load_onnx(in_onnx)
    try:
        simplified, ok = onnxsim.simplify(model, check_n=0)
    except Exception as exc:
        raise StageError(f"onnxsim failed on {in_onnx}: {type(exc).__name__}: {exc}") from exc
    if not ok:
        raise StageError(f"onnxsim could not validate the simplified model of {in_onnx}")
    with atomic_output(Path(out_onnx)) as tmp:
        onnx.save(simplified, str(tmp))
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
    transposed: dict[str, str] = {}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if (
            node.op_type != "Gemm"
            or node.input[1] not in inits
            or attrs.get("transA", 0)
            or attrs.get("alpha", 1.0) != 1.0
            or (len(node.input) > 2 and node.input[2] and attrs.get("beta", 1.0) != 1.0)
        ):
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            if weight not in transposed:
                name = weight + "_kn"
                graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[weight]).T.copy(), name))
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
    onnx.checker.check_model(model, full_check=False)
    with atomic_output(Path(out_onnx)) as tmp:
        onnx.save(model, str(tmp))
    log.info("%s: %d Gemm -> MatMul", out_onnx, rewritten)
    return rewritten


def graph_to_savedmodel(
    in_onnx: Path,
    out_dir: Path,
    *,
    onnx2tf_options: dict | None = None,
    fast_weight_matmul: bool = True,
    check=None,
) -> dict | None:
    """onnx2tf Keras model of a multi-input graph, saved with named inputs and named outputs.

    The ``serving_default`` signature takes the ONNX input names and returns a
    dict keyed by the ONNX output names, so TFLite's signature runner maps both
    by name (``get_input_details()`` order is scrambled and every cache has the same shape).
    ``check(run)``, given ``run(feeds) -> outputs`` of the Keras model (by name), is called
    before anything is saved and its result returned; it raises to fail the stage.
    """
    import tensorflow as tf
    import tf_keras

    from .files import load_onnx
    from .savedmodel import _keras_model

    proto = load_onnx(in_onnx)
    in_names = [i.name for i in proto.graph.input]
    in_shapes = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input]
    out_names = [o.name for o in proto.graph.output]
    del proto
    options = {"not_use_onnxsim": True, "verbosity": "warn", **(onnx2tf_options or {})}
    with atomic_output(Path(out_dir)) as tmp:
        work = tmp.with_name(tmp.name + "-onnx2tf")
        model = _keras_model(in_onnx, work, options, fast_weight_matmul)
        if len(model.inputs) != len(in_names) or len(model.outputs) != len(out_names):
            raise StageError(
                f"onnx2tf made {len(model.inputs)} inputs / {len(model.outputs)} outputs of {in_onnx}; "
                f"the ONNX graph has {len(in_names)} / {len(out_names)}"
            )
        specs = [tf.TensorSpec(t.shape, t.dtype, name) for name, t in zip(in_names, model.inputs, strict=True)]
        if [list(s.shape) for s in specs] != in_shapes:
            raise StageError(
                f"onnx2tf changed the input shapes of {in_onnx}: {[list(s.shape) for s in specs][:5]}... "
                f"instead of {in_shapes[:5]}..."
            )
        checked = check(_keras_runner(model, specs, out_names)) if check is not None else None

        def serve(*xs):
            outs = model(list(xs))
            outs = outs if isinstance(outs, list | tuple) else [outs]
            return {name: tf.identity(o, name=name) for name, o in zip(out_names, outs, strict=True)}

        archive = tf_keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(name=SIGNATURE, fn=serve, input_signature=specs)
        archive.write_out(str(tmp))
        if not (tmp / "saved_model.pb").is_file():
            raise StageError(f"the SavedModel at {tmp} has no saved_model.pb")
    return checked


def _keras_runner(model, specs: list, out_names: list[str]):
    """``run(feeds) -> outputs`` (by name) of the Keras model, traced once for ``specs``."""
    import tensorflow as tf

    @tf.function(input_signature=specs)
    def serve(*xs):
        return model(list(xs))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [tf.constant(np.asarray(feeds[s.name]).astype(s.dtype.as_numpy_dtype)) for s in specs]
        outs = serve(*args)
        outs = outs if isinstance(outs, list | tuple) else [outs]
        return {name: np.asarray(o) for name, o in zip(out_names, outs, strict=True)}

    return run


def main_host_tables(argv: list[str] | None = None) -> None:
    from .cli import config_default, parser
    from .logs import log_to

    p = parser("host_tables", write_host_tables.__doc__ or "")
    p.add_argument("--model", type=Path, required=True, help="prepared HF folder")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompt-len", type=int, default=config_default("generation", "prompt_tokens"))
    p.add_argument("--max-len", type=int, default=config_default("generation", "max_len"))
    p.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        write_host_tables(args.model, args.out, prompt_len=args.prompt_len, max_len=args.max_len)
