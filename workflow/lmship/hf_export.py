"""Generation graphs made by transformers' own exporters (``transformers.exporters``), how they run, their gate.

Two backends, each a folder that says which path made it (``lmship_export.json``,
``made_by: transformers.exporters``):

``ort``       :func:`export_ort`: ``OnnxExporter`` on the prefill and decode steps that
              ``decompose_for_generation`` captures from ``model.generate`` with a static
              cache of ``max_len`` slots (``GenerationConfig(cache_implementation="static",
              max_cache_len=max_len)``). ``prefill.onnx`` takes ``prompt_len`` tokens and writes
              the whole cache; ``decode.onnx`` takes one token, its position, the causal mask
              row(s) over the cache, every layer's K/V ``[1, kv_heads, max_len, head_dim]`` and
              ``cumulative_length``, writes the token's K/V into the cache inside the graph
              (ScatterND) and returns the whole updated cache. ``ort_fusions="cpu"`` lets the
              exporter fuse the graphs into ONNX Runtime's own ops.
``openvino``  :func:`export_openvino`: ``OpenVINOExporter`` on the multi-token decode step over
              a dynamic cache (``dynamic=True``, ``stateful=True``): one IR,
              ``openvino_model.xml``, whose K/V cache is OpenVINO state (``ReadValue`` /
              ``Assign``, reordered by ``beam_idx``). The same IR takes the whole prompt on
              an empty state and then one token per step, which is the layout OpenVINO GenAI's
              ``LLMPipeline(folder, "CPU", ATTENTION_BACKEND="SDPA")`` loads (its stateful
              pipeline; the IR gets the ``attention_mask`` port GenAI sets, and with
              ``tokenizer=True`` the folder also gets ``openvino_tokenizer.xml`` /
              ``openvino_detokenizer.xml``).

With ``last_logits_only`` (the default) the captured prompt step gets ``logits_to_keep=1``, so the
graphs compute the LM head for the last position only, as greedy generation needs.

:func:`generate` runs a folder's graphs greedily (ONNX Runtime through IOBinding with two cache
buffer sets that swap roles every step, so no cache is copied on the host; OpenVINO through one
infer request whose state is reset per prompt) and returns a :class:`ExportedGenerationResult`
(the fields of :class:`lmship.runtimes.GenerationResult`, plus ``made_by``).
:mod:`lmship.runtimes.openvino_genai` runs the OpenVINO folder in OpenVINO GenAI's ``LLMPipeline``.
:func:`check_against_pytorch` is the gate: the graphs must generate PyTorch's greedy tokens
(transformers with its own KV cache, :func:`lmship.runtimes.pytorch.generate`) and, fed PyTorch's
tokens, match its logits (largest absolute difference relative to the standard deviation of
PyTorch's logits, mean KL divergence, top-1 agreement: :func:`lmship.quality.logit_failures`);
otherwise it raises :class:`lmship.StageError`.

What the exporters cannot make is refused by name with a :class:`lmship.StageError`: a model that
is not a causal LM, a multimodal model, a static (ORT) cache longer than a sliding-window layer's
window (that layer's static cache holds only the window and its exported step follows the branch
of the cache that was traced, not yet full), and any exporter failure, with the component and the
exporter's own message.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import StageError
from .files import atomic_output, read_json, size_bytes
from .generate import same_text
from .logs import peak_rss_mb
from .quality import compare_logits, logit_failures
from .runtimes import EXPORT_MANIFEST as MANIFEST
from .runtimes import GenerationResult, pytorch
from .runtimes.openvino_genai import StatefulIR
from .runtimes.ort_exporters import OrtSteps

log = logging.getLogger(__name__)

#: What ``made_by`` says for every graph of this module.
MADE_BY = "transformers.exporters"
BACKENDS = ("ort", "openvino")
OPENVINO_MODEL = "openvino_model.xml"
ORT_FUSIONS = (None, "cpu")


@dataclass
class ExportedGenerationResult(GenerationResult):
    """:class:`lmship.runtimes.GenerationResult` of an exported folder, with the path that made its graphs."""

    made_by: str = MADE_BY

    def summary(self) -> dict:
        return {**super().summary(), "made_by": self.made_by}


# --------------------------------------------------------------------------- export


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def _load_causal_lm(hf_dir: Path):
    """The fp32 model of ``hf_dir`` in eval mode, or a StageError naming why it cannot generate."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_dir = Path(hf_dir)
    if not (hf_dir / "config.json").is_file():
        raise StageError(f"{hf_dir} holds no config.json: prepare the model folder first")
    config = AutoConfig.from_pretrained(hf_dir)
    if getattr(config, "is_encoder_decoder", False):
        raise StageError(
            f"{hf_dir} is an encoder-decoder model ({config.model_type}); these exports cover decoder-only causal LMs"
        )
    try:
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    except ValueError as exc:
        raise StageError(
            f"{hf_dir} ({config.model_type}) is not a causal language model transformers can load with "
            f"AutoModelForCausalLM: {str(exc).splitlines()[0][:300]}"
        ) from exc
    return model


def sliding_window(config) -> int | None:
    """The window of the model's sliding-window attention layers, or None when every layer attends to all."""
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None:
        return int(window) if "sliding_attention" in layer_types else None
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return int(window)


def check_lengths(config, *, max_len: int, prompt_len: int | None = None, static_cache: bool = True) -> None:
    """Refuse lengths the exported graphs cannot serve: beyond the model's positions, or (``static_cache``) a
    static cache longer than a sliding-window layer's window."""
    if max_len < 2:
        raise StageError(f"max_len ({max_len}) must be >= 2")
    if prompt_len is not None and not 1 <= prompt_len < max_len:
        raise StageError(f"prompt_len ({prompt_len}) must be >= 1 and smaller than max_len ({max_len})")
    positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if positions and max_len > positions:
        raise StageError(f"max_len {max_len} exceeds the model's {positions} positions")
    window = sliding_window(config)
    if static_cache and window is not None and max_len > window:
        raise StageError(
            f"{config.model_type} has sliding-window layers of {window} positions, shorter than max_len {max_len}: "
            "transformers' exported step keeps the branch of the window cache it was traced in (not yet full), "
            "so past the window its answers would change. Lower max_len to at most the window."
        )


def _sample_inputs(model, length: int) -> dict:
    """Generate kwargs for the capture: ``length`` fixed token ids (the trace does not depend on their values)."""
    import torch

    vocab = int(model.config.vocab_size)
    ids = (torch.arange(length, dtype=torch.int64) * 7919 + 11) % max(vocab - 3, 1) + 3
    ids = ids.reshape(1, -1)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _generation_config(model, **kwargs):
    from transformers import GenerationConfig

    pad = model.config.pad_token_id
    if pad is None:
        pad = 0
    return GenerationConfig(do_sample=False, pad_token_id=pad, eos_token_id=model.config.eos_token_id, **kwargs)


def _decompose(model, inputs: dict, generation_config, *, multi_token_decode: bool) -> dict:
    from transformers.exporters.utils import decompose_for_generation, is_multimodal

    if is_multimodal(model):
        raise StageError(f"{type(model).__name__} is multimodal; these exports cover text-only causal LMs")
    try:
        components = decompose_for_generation(
            model, inputs, generation_config=generation_config, multi_token_decode=multi_token_decode
        )
    except Exception as exc:
        raise StageError(
            f"transformers {_transformers_version()} cannot capture the generation steps of "
            f"{type(model).__name__}: {_cause(exc)}"
        ) from exc
    if set(components) != {"prefill", "decode"}:
        raise StageError(f"{type(model).__name__} decomposes into {sorted(components)}, not prefill and decode")
    return components


def _cause(exc: BaseException) -> str:
    """The exception and the chain under it, one line each, shortened: the exporter wraps the real cause."""
    parts = []
    while exc is not None and len(parts) < 4:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        parts.append(f"{type(exc).__name__}: {first[:400]}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)


def _export_component(exporter, backend: str, name: str, model, inputs: dict, config):
    try:
        return exporter.export(model, inputs, config)
    except Exception as exc:
        raise StageError(
            f"transformers {_transformers_version()} {type(exporter).__name__} cannot export the {name} step of "
            f"{type(model).__name__} ({model.config.model_type}) for {backend}: {_cause(exc)}"
        ) from exc


def _onnx_io(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def described(values) -> list[dict]:
        out = []
        for v in values:
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            out.append(
                {"name": v.name, "shape": dims, "type": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type)}
            )
        return out

    ops: dict[str, int] = {}
    for node in model.graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        ops[key] = ops.get(key, 0) + 1
    return {
        "nodes": len(model.graph.node),
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "inputs": described(model.graph.input),
        "outputs": described(model.graph.output),
    }


def _write_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def read_manifest(folder: Path) -> dict:
    """The ``lmship_export.json`` of an exported folder, or a StageError saying the folder is not one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise StageError(f"{folder} is not a folder written by lmship.hf_export (no {MANIFEST})")
    manifest = read_json(path)
    if manifest.get("backend") not in BACKENDS:
        raise StageError(f"{path} names backend {manifest.get('backend')!r}; expected one of {BACKENDS}")
    return manifest


def export_ort(
    hf_dir: Path,
    out_dir: Path,
    *,
    prompt_len: int,
    max_len: int,
    ort_fusions: str | None = None,
    last_logits_only: bool = True,
    opset: int | None = None,
) -> Path:
    """Export ``hf_dir``'s prefill and decode steps with ``OnnxExporter`` into ``out_dir`` for ONNX Runtime.

    ``prompt_len`` fixes the prefill graph's length, ``max_len`` the static cache's slots. ``ort_fusions``
    (None or ``"cpu"``) is ``OnnxConfig.ort_fusions``. Check the folder with :func:`check_against_pytorch`.
    """
    if ort_fusions not in ORT_FUSIONS:
        raise StageError(f"ort_fusions must be one of {ORT_FUSIONS}, got {ort_fusions!r}")
    from transformers.exporters import ExportedModel, OnnxConfig, OnnxExporter

    started = time.monotonic()
    model = _load_causal_lm(Path(hf_dir))
    check_lengths(model.config, max_len=max_len, prompt_len=prompt_len)
    generation_config = _generation_config(model, cache_implementation="static", max_cache_len=max_len)
    components = _decompose(model, _sample_inputs(model, prompt_len), generation_config, multi_token_decode=False)
    if last_logits_only:
        components["prefill"][1]["logits_to_keep"] = 1
    exporter = OnnxExporter()
    config = OnnxConfig(ort_fusions=ort_fusions, opset_version=opset)
    exported = {}
    for name in ("prefill", "decode"):
        submodel, inputs = components[name]
        exported[name] = _export_component(exporter, "ort", name, submodel, inputs, config).components["model"]
    program = ExportedModel(exported, "onnx", config=model.config, generation_config=generation_config)
    with atomic_output(Path(out_dir)) as tmp:
        program.save_pretrained(tmp)
        io = {name: _onnx_io(tmp / f"{name}.onnx") for name in exported}
        _write_manifest(
            tmp,
            {
                "made_by": MADE_BY,
                "exporter": f"transformers {_transformers_version()} OnnxExporter",
                "backend": "ort",
                "model_type": model.config.model_type,
                "architecture": type(model).__name__,
                "components": {name: f"{name}.onnx" for name in exported},
                "prompt_len": prompt_len,
                "max_len": max_len,
                "cache": "static, in graph inputs and outputs",
                "ort_fusions": ort_fusions,
                "last_logits_only": last_logits_only,
                "export_s": round(time.monotonic() - started, 1),
                "peak_rss_mb": round(peak_rss_mb()),
                "io": io,
            },
        )
    log.info(
        "ORT generation graphs of %s by %s in %s (%.1f MB, %.0f s, peak RSS %.0f MB)",
        hf_dir,
        MADE_BY,
        out_dir,
        size_bytes(Path(out_dir)) / 1e6,
        time.monotonic() - started,
        peak_rss_mb(),
    )
    return Path(out_dir)


def _openvino_io(model) -> dict:
    def described(ports) -> list[dict]:
        return [
            {
                "name": p.get_any_name(),
                "shape": str(p.get_partial_shape()),
                "type": p.get_element_type().get_type_name(),
            }
            for p in ports
        ]

    return {
        "ops": len(model.get_ordered_ops()),
        "inputs": described(model.inputs),
        "outputs": described(model.outputs),
        "state": [v.get_info().variable_id for v in model.get_variables()],
    }


def export_openvino(
    hf_dir: Path,
    out_dir: Path,
    *,
    max_len: int,
    last_logits_only: bool = True,
    tokenizer: bool = False,
) -> Path:
    """Export ``hf_dir`` with ``OpenVINOExporter`` into ``out_dir`` as one stateful IR, ``openvino_model.xml``.

    The IR's cache is internal state and its sequence axis is dynamic: it takes a whole prompt on an empty
    state, then one token per step. Sliding-window layers keep every position in their state too, the window
    being applied by their mask, so the answers stay the model's past the window (check it with prompts that
    cross it). ``max_len`` is the longest sequence the folder is checked and run for (within the model's
    positions). ``tokenizer`` adds the tokenizer and detokenizer IRs
    (``openvino_tokenizers``), which OpenVINO GenAI needs to take text.
    """
    from transformers.exporters import OpenVINOConfig, OpenVINOExporter

    started = time.monotonic()
    model = _load_causal_lm(Path(hf_dir))
    check_lengths(model.config, max_len=max_len, static_cache=False)
    converter = _tokenizer_converter() if tokenizer else None
    components = _decompose(model, _sample_inputs(model, 8), _generation_config(model), multi_token_decode=True)
    submodel, inputs = components["decode"]
    if last_logits_only:
        inputs["logits_to_keep"] = 1
    exported = _export_component(
        OpenVINOExporter(), "openvino", "multi-token decode", submodel, inputs, OpenVINOConfig(dynamic=True)
    )
    program = exported.program
    if last_logits_only:
        _fold_input(program, "logits_to_keep", 1)
    _declare_attention_mask(program)
    if not program.get_variables():
        raise StageError(f"the OpenVINO IR of {hf_dir} holds no state: the KV cache was not folded into the model")
    with atomic_output(Path(out_dir)) as tmp:
        exported.save_pretrained(tmp)  # openvino_model.xml / .bin, export.json, config.json
        model.generation_config.save_pretrained(tmp)
        if converter is not None:
            _write_tokenizer(converter, Path(hf_dir), tmp)
        _write_manifest(
            tmp,
            {
                "made_by": MADE_BY,
                "exporter": f"transformers {_transformers_version()} OpenVINOExporter",
                "backend": "openvino",
                "model_type": model.config.model_type,
                "architecture": type(model).__name__,
                "components": {"model": OPENVINO_MODEL},
                "max_len": max_len,
                "cache": "OpenVINO state (stateful IR, beam_idx)",
                "last_logits_only": last_logits_only,
                "tokenizer": converter is not None,
                "export_s": round(time.monotonic() - started, 1),
                "peak_rss_mb": round(peak_rss_mb()),
                "io": _openvino_io(program),
            },
        )
    log.info(
        "stateful OpenVINO IR of %s by %s in %s (%.1f MB, %.0f s, peak RSS %.0f MB)",
        hf_dir,
        MADE_BY,
        out_dir,
        size_bytes(Path(out_dir)) / 1e6,
        time.monotonic() - started,
        peak_rss_mb(),
    )
    return Path(out_dir)


def _fold_input(model, name: str, value: int) -> None:
    """Replace the scalar input ``name`` of an OpenVINO model by the constant ``value`` (a dynamic export turns
    ``logits_to_keep`` into an input, which OpenVINO GenAI would not feed)."""
    import openvino.opset14 as ops

    params = [p for p in model.get_parameters() if name in p.get_output_tensor(0).get_names()]
    if not params:
        return
    param = params[0]
    constant = ops.constant(np.array(value, dtype=param.get_element_type().to_dtype()))
    param.output(0).replace(constant.output(0))
    model.remove_parameter(param)
    model.validate_nodes_and_infer_types()


def _declare_attention_mask(model) -> None:
    """Give the IR the ``attention_mask`` input [batch, positions] that OpenVINO GenAI always sets.

    The exporter drops the mask when the traced one is all ones (the model then masks causally by itself), and
    GenAI refuses a model without the port. The declared input is not read: the IR serves one unpadded sequence.
    """
    import openvino as ov
    import openvino.opset14 as ops

    if any("attention_mask" in port.get_names() for port in model.inputs):
        return
    mask = ops.parameter([-1, -1], ov.Type.i64, name="attention_mask")
    mask.output(0).get_tensor().set_names({"attention_mask"})
    model.add_parameters([mask])
    model.validate_nodes_and_infer_types()


def _tokenizer_converter():
    try:
        from openvino_tokenizers import convert_tokenizer
    except ImportError as exc:
        raise StageError(
            "tokenizer=True needs openvino-tokenizers (the version of the installed openvino, e.g. "
            "openvino-tokenizers==2026.4.1.0) importable: install it, or export without the tokenizer IRs"
        ) from exc
    return convert_tokenizer


def _write_tokenizer(convert_tokenizer, hf_dir: Path, folder: Path) -> None:
    import openvino as ov
    from transformers import AutoTokenizer

    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        tokenizer, detokenizer = convert_tokenizer(hf_tokenizer, with_detokenizer=True)
    except Exception as exc:
        raise StageError(f"openvino_tokenizers cannot convert the tokenizer of {hf_dir}: {_cause(exc)}") from exc
    ov.save_model(tokenizer, str(folder / "openvino_tokenizer.xml"))
    ov.save_model(detokenizer, str(folder / "openvino_detokenizer.xml"))


# --------------------------------------------------------------------------- running the graphs


_STEPS = {"ort": OrtSteps, "openvino": StatefulIR}


def _greedy(steps, prompt: np.ndarray, new_tokens: int, *, forced: list[int] | None, collect: bool):
    ids = np.asarray(prompt, dtype=np.int64).reshape(-1)
    if ids.size + new_tokens - 1 > steps.max_len:
        raise StageError(
            f"a prompt of {ids.size} tokens + {new_tokens} new tokens needs {ids.size + new_tokens - 1} positions; "
            f"the folder was exported for {steps.max_len}"
        )
    started = time.perf_counter()
    logits = steps.prompt(ids)
    token = int(np.argmax(logits))
    ttft = (time.perf_counter() - started) * 1000.0
    tokens, decode_ms = [token], []
    seen = [np.array(logits, np.float32)] if collect else []
    for i in range(1, new_tokens):
        feed = forced[i - 1] if forced is not None else token
        t0 = time.perf_counter()
        logits = steps.step(int(feed))
        token = int(np.argmax(logits))
        decode_ms.append((time.perf_counter() - t0) * 1000.0)
        tokens.append(token)
        if collect:
            seen.append(np.array(logits, np.float32))
    return tokens, ttft, decode_ms, seen


def _made_by(manifest: dict) -> str:
    return f"{MADE_BY} ({manifest['exporter']})"


def generate(
    folder: Path,
    prompts: list[np.ndarray],
    *,
    new_tokens: int,
    threads: int = 1,
    warmup: bool = True,
    collect_logits: bool = False,
    forced: list[list[int]] | None = None,
) -> ExportedGenerationResult:
    """Greedy ``new_tokens`` per prompt with the graphs of an exported folder, at ``threads`` intra-op threads.

    ``forced`` feeds those ids per prompt instead of the greedy ones (teacher forcing, for the logit check);
    ``collect_logits`` keeps every generated position's logits. ``runtime`` is ``ort`` or ``openvino``;
    ``threads_in_effect`` on the result is what the runtime reports it uses.
    """
    if new_tokens < 1:
        raise StageError(f"new_tokens must be >= 1, got {new_tokens}")
    folder = Path(folder)
    manifest = read_manifest(folder)
    started = time.perf_counter()
    steps = _STEPS[manifest["backend"]](folder, manifest, threads)
    load_s = time.perf_counter() - started
    if warmup:
        _greedy(steps, np.asarray(prompts[0]), 2, forced=None, collect=False)
    result = ExportedGenerationResult(
        manifest["backend"], threads, [], [], [], load_s, [], [] if collect_logits else None, made_by=_made_by(manifest)
    )
    for k, prompt in enumerate(prompts):
        tokens, ttft, decode_ms, seen = _greedy(
            steps, np.asarray(prompt), new_tokens, forced=forced[k] if forced else None, collect=collect_logits
        )
        result.tokens.append(tokens)
        result.ttft_ms.append(ttft)
        result.decode_ms.append(decode_ms)
        result.prompt_lens.append(int(np.asarray(prompt).size))
        if collect_logits:
            result.logits.append(seen)
    result.threads_in_effect = steps.threads_in_effect
    result.runtime_version = steps.version
    return result


# --------------------------------------------------------------------------- the gate


def check_against_pytorch(
    folder: Path,
    hf_dir: Path,
    prompts: list[np.ndarray],
    *,
    new_tokens: int = 16,
    max_rel_diff: float = 0.01,
    max_mean_kld: float = 1e-5,
    min_top1: float = 100.0,
    require_identical: bool = True,
    threads: int = 1,
    stage: str | None = None,
) -> dict:
    """Gate an exported folder against PyTorch (transformers with its own KV cache): raise or return the metrics.

    The folder's graphs generate ``new_tokens`` greedily from each prompt; with ``require_identical`` they must
    produce PyTorch's tokens. They are then fed PyTorch's tokens (teacher forcing) and every generated
    position's logits are compared as every fp32 gate compares them (:func:`lmship.quality.logit_failures`):
    the largest absolute difference over the standard deviation of PyTorch's logits within ``max_rel_diff``,
    the mean KL divergence (nats) within ``max_mean_kld``, and top-1
    agreement at least ``min_top1`` %.
    """
    folder, hf_dir = Path(folder), Path(hf_dir)
    manifest = read_manifest(folder)
    where = f"{stage + ': ' if stage else ''}{manifest['backend']} graphs in {folder} ({MADE_BY})"
    ref = pytorch.generate(hf_dir, prompts, new_tokens, int(manifest["max_len"]), collect_logits=True, warmup=False)
    free = generate(folder, prompts, new_tokens=new_tokens, threads=threads, warmup=False)
    texts = [same_text(r, g) for r, g in zip(ref.tokens, free.tokens, strict=True)]
    forced = generate(
        folder, prompts, new_tokens=new_tokens, threads=threads, warmup=False, collect_logits=True, forced=ref.tokens
    )
    metrics = compare_logits([x for per in ref.logits for x in per], [x for per in forced.logits for x in per])
    off = logit_failures(metrics, max_rel_diff=max_rel_diff, max_mean_kld=max_mean_kld)
    failures = [f"differs from PyTorch's logits ({', '.join(off)})"] if off else []
    metrics.update(
        made_by=free.made_by,
        identical_prompts=sum(t["identical"] for t in texts),
        prompts=len(texts),
        first_divergence=[t["first_divergence"] for t in texts],
    )
    log.info("%s vs PyTorch: %s", where, metrics)
    if not metrics["finite"]:
        raise StageError(f"{where} produced NaN or infinite logits")
    if require_identical and metrics["identical_prompts"] < len(texts):
        failures.append(
            f"generates PyTorch's greedy tokens for {metrics['identical_prompts']} of {len(texts)} prompts "
            f"(first divergence at token {metrics['first_divergence']})"
        )
    if metrics["top1_agreement_pct"] < min_top1:
        failures.append(f"agrees on the top-1 token at {metrics['top1_agreement_pct']:.2f}% (required {min_top1}%)")
    if failures:
        raise StageError(
            f"{where} {'; '.join(failures)} over {metrics['positions']} positions: the exported graph does not "
            "compute the model"
        )
    return metrics


# --------------------------------------------------------------------------- command line


def _prompts_from_text(hf_dir: Path, text: str, *, count: int, length: int) -> list[np.ndarray]:
    """Cut ``count`` prompts of ``length`` tokens from ``text`` (consecutive, non-overlapping)."""
    from transformers import AutoTokenizer

    ids = np.asarray(AutoTokenizer.from_pretrained(hf_dir)(text)["input_ids"], dtype=np.int64)
    if ids.size < count * length:
        raise StageError(f"the text has {ids.size} tokens; {count} prompts of {length} need {count * length}")
    return [ids[i * length : (i + 1) * length] for i in range(count)]


def main(argv: list[str] | None = None) -> None:
    """``python -m lmship.hf_export export|check ...``: export a model's generation graphs, or gate a folder."""
    from .cli import parser
    from .files import write_json
    from .logs import log_to
    from .text import bundled_text

    p = parser("hf_export", __doc__)
    commands = p.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export", help="export the generation graphs of an HF folder")
    export.add_argument("--backend", choices=BACKENDS, required=True)
    export.add_argument("--hf", type=Path, required=True, help="the model's HF folder")
    export.add_argument("--out", type=Path, required=True, help="the folder to write")
    export.add_argument("--max-len", type=int, required=True, help="cache slots (positions the folder serves)")
    export.add_argument("--prompt-len", type=int, help="the ORT prefill graph's prompt length")
    export.add_argument("--ort-fusions", choices=[f for f in ORT_FUSIONS if f])
    export.add_argument("--all-logits", action="store_true", help="keep the prompt step's logits at every position")
    export.add_argument("--tokenizer", action="store_true", help="add OpenVINO tokenizer IRs (for OpenVINO GenAI)")
    check = commands.add_parser("check", help="gate an exported folder against PyTorch")
    check.add_argument("--folder", type=Path, required=True)
    check.add_argument("--hf", type=Path, required=True)
    check.add_argument("--prompts", type=int, required=True, help="prompts cut from the bundled prose")
    check.add_argument("--prompt-tokens", type=int, required=True)
    check.add_argument("--new-tokens", type=int, required=True)
    check.add_argument("--metrics", type=Path, help="write the gate's figures here (JSON)")
    for command in (export, check):
        command.add_argument("--log", type=Path)
    args = p.parse_args(argv)
    with log_to(args.log):
        if args.command == "export" and args.backend == "ort":
            if args.prompt_len is None:
                raise StageError("--prompt-len is needed for the ORT prefill graph")
            export_ort(
                args.hf,
                args.out,
                prompt_len=args.prompt_len,
                max_len=args.max_len,
                ort_fusions=args.ort_fusions,
                last_logits_only=not args.all_logits,
            )
        elif args.command == "export":
            export_openvino(
                args.hf, args.out, max_len=args.max_len, last_logits_only=not args.all_logits, tokenizer=args.tokenizer
            )
        else:
            prompts = _prompts_from_text(args.hf, bundled_text(), count=args.prompts, length=args.prompt_tokens)
            metrics = check_against_pytorch(args.folder, args.hf, prompts, new_tokens=args.new_tokens)
            if args.metrics is not None:
                write_json(args.metrics, metrics)


if __name__ == "__main__":
    main()
