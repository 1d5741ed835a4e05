"""The backend catalogue: the one list of what the workflow can time and evaluate.

A backend is a runtime (:mod:`lmship.runtimes`, by its one name) plus the artifact it runs and the
options it runs it with. The artifact is named by the rule that makes it and that rule's output
(``rule``, ``output``) with the rule's own wildcards fixed (``wildcards``, e.g. the TFLite
precision), so the workflow derives every path from the rule (``rules.<rule>.output.<output>``)
and nothing here repeats a path. A backend's name is its artifact folder's name (``tflite_fp16``
runs ``tflite_fp16/model.tflite``; see :mod:`lmship.records`), or that name and the options a
runtime runs the same artifact with (``openvino_bf16`` runs ``openvino/model.xml`` with bf16
inference precision); the reference ``pytorch`` (and ``pytorch_bf16``) runs the prepared Hugging
Face folder ``hf/``. ``arithmetic`` names the matmul limit its speed is set against; ``cpu_flags``
the instructions it needs; ``generates`` whether it takes part in the generation benchmark (with
the workflow's graphs or its runtime's own loop, as the runtime declares); ``made_by`` the path
that made its graphs, for the tables.

The peers a user would pick instead of converting (llama.cpp's GGUF files, ONNX Runtime GenAI's
model builder, OpenVINO GenAI's pipeline) are backends like any other.

Adding a backend: a line here and, if its artifact is new, the rule that makes it. Adding a
runtime: its module in :mod:`lmship.runtimes`, its name there, and its backends here.
Standard library only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import StageError
from .host import BF16_FLAGS
from .runtimes import NAMES

#: The registered runtimes (lmship.runtimes): a backend runs in one of them.
RUNTIMES = NAMES

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4")
#: What a backend's matmuls compute in: selects the machine limit its speed is set against.
ARITHMETIC = ("fp32", "bf16", "int8")
REFERENCE = "pytorch"
#: Model sources whose weights come from a GGUF file (and may sit on its quantisation grid).
GGUF_SOURCES = ("pypi_gguf", "gguf")
#: Who made a backend's graphs: the workflow's own export and hand-written generation graphs, or a vendor's tool.
MADE_BY = ("lmship", "transformers.exporters", "llama.cpp convert_hf_to_gguf", "onnxruntime-genai builder")


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: str  # one of RUNTIMES (see lmship.runtimes)
    precision: str  # one of PRECISIONS: selects the accuracy tolerance
    rule: str  # the rule that makes the artifact ...
    output: str  # ... and its named output
    label: str
    note: str = ""
    wildcards: dict[str, str] = field(default_factory=dict)
    #: model sources whose weights this backend applies to (empty: every model)
    sources: tuple[str, ...] = ()
    #: the matmul arithmetic it runs (one of ARITHMETIC)
    arithmetic: str = "fp32"
    #: CPU flags of which it needs one (empty: any x86-64 CPU)
    cpu_flags: tuple[str, ...] = ()
    #: options its runtime opens the artifact with (a precision hint, bf16 autocast)
    options: dict[str, str] = field(default_factory=dict)
    #: whether it generates text in the generation benchmark
    generates: bool = True
    made_by: str = "lmship"
    #: the ggml tensor type the source GGUF must hold for it to apply (None: any model)
    gguf_type: str | None = None

    def __hash__(self) -> int:
        return hash(self.name)


def _tflite(precision: str, label: str, note: str) -> Backend:
    arithmetic = "int8" if precision == "int8" else "fp32"
    return Backend(
        f"tflite_{precision}",
        "litert",
        precision,
        "tflite",
        "artifact",
        label,
        note,
        {"precision": precision},
        arithmetic=arithmetic,
    )


def _quantized_onnx(
    variant: str, precision: str, label: str, note: str, sources: tuple[str, ...] = (), arithmetic: str = "int8"
) -> Backend:
    return Backend(
        f"onnx_{variant}",
        "onnxruntime",
        precision,
        "quantize_onnx",
        "artifact",
        label,
        note,
        {"variant": variant},
        sources,
        arithmetic,
    )


def _compressed_ir(
    compression: str,
    precision: str,
    label: str,
    note: str,
    sources: tuple[str, ...] = (),
    arithmetic: str = "int8",
    generates: bool = True,
) -> Backend:
    return Backend(
        f"openvino_{compression}",
        "openvino",
        precision,
        "compress_openvino",
        "artifact",
        label,
        note,
        {"compression": compression},
        sources,
        arithmetic,
        generates=generates,
    )


def _gguf(quant: str, precision: str, label: str, note: str, arithmetic: str, sources: tuple[str, ...] = ()):
    return Backend(
        f"llamacpp_{quant}",
        "llamacpp",
        precision,
        "gguf",
        "artifact",
        label,
        note,
        {"quant": quant},
        sources,
        arithmetic,
        made_by="llama.cpp convert_hf_to_gguf",
    )


def _genai(variant: str, precision: str, label: str, note: str, arithmetic: str) -> Backend:
    return Backend(
        f"ort_genai_{variant}",
        "ort_genai",
        precision,
        "genai_model",
        "artifact",
        label,
        note,
        {"genai": variant},
        arithmetic=arithmetic,
        made_by="onnxruntime-genai builder",
    )


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("pytorch", "pytorch", "fp32", "prepare_model", "model", "PyTorch fp32", "eager, inference_mode, sdpa"),
        Backend(
            "pytorch_int8",
            "pytorch",
            "int8",
            "quantize_pytorch",
            "artifact",
            "PyTorch int8",
            "quantize_dynamic of every nn.Linear (qint8)",
            arithmetic="int8",
            generates=False,
        ),
        Backend(
            "pytorch_bf16",
            "pytorch",
            "bf16",
            "prepare_model",
            "model",
            "PyTorch bf16",
            "fp32 weights under CPU bf16 autocast",
            arithmetic="bf16",
            cpu_flags=BF16_FLAGS,
            options={"autocast": "bf16"},
            generates=False,
        ),
        Backend("onnx", "onnxruntime", "fp32", "export_onnx", "artifact", "ORT fp32", "exported ONNX"),
        Backend(
            "onnx_simplified",
            "onnxruntime",
            "fp32",
            "simplify_onnx",
            "artifact",
            "ORT fp32 (onnxsim)",
            "simplified ONNX",
        ),
        _quantized_onnx("int8_dynamic", "int8", "ORT int8 dynamic", "quantize_dynamic of every MatMul: the naive int8"),
        _quantized_onnx("int8_block", "int8", "ORT int8 block-wise", "MatMulNBits 8-bit, int8 activations per block"),
        replace(
            _quantized_onnx(
                "q4_exact",
                "int4",
                "ORT 4-bit exact grid",
                "GGUF-grid weights stored losslessly in 4 bits",
                sources=GGUF_SOURCES,
                arithmetic="fp32",
            ),
            gguf_type="Q4_1",
        ),
        _tflite("fp32", "TFLite fp32", "builtins only"),
        _tflite("fp16", "TFLite fp16", "fp16 weights"),
        _tflite("int8", "TFLite int8", "dynamic-range quantisation"),
        Backend("openvino", "openvino", "fp32", "openvino_ir", "artifact", "OpenVINO f32", "IR from the ONNX model"),
        Backend(
            "openvino_bf16",
            "openvino",
            "bf16",
            "openvino_ir",
            "artifact",
            "OpenVINO bf16",
            "the same IR, bf16 inference precision",
            arithmetic="bf16",
            cpu_flags=BF16_FLAGS,
            options={"precision_hint": "bf16"},
        ),
        _compressed_ir("int8_asym", "int8", "OpenVINO int8 weights", "NNCF int8 asymmetric per channel"),
        _compressed_ir(
            "int8_asym_fp32_head",
            "int8",
            "OpenVINO int8, fp32 head",
            "NNCF int8 per channel, embedding and LM head kept fp32",
        ),
        _compressed_ir("int4_asym_g32", "int4", "OpenVINO int4 g32", "NNCF int4 asymmetric, groups of 32, data-free"),
        _compressed_ir(
            "int4_asym_g32_awq",
            "int4",
            "OpenVINO int4 g32 AWQ",
            "NNCF int4 groups of 32, AWQ + scale estimation on calibration prose",
            generates=False,  # calibrated on forward windows: a forward-only row
        ),
        replace(
            _compressed_ir(
                "q4_exact",
                "int4",
                "OpenVINO 4-bit exact grid",
                "GGUF-grid weights kept on their grid (u4, float zero point), fp32 activations",
                sources=GGUF_SOURCES,
                arithmetic="fp32",
            ),
            gguf_type="Q4_1",
        ),
        Backend(
            "ort_exporters",
            "ort_exporters",
            "fp32",
            "exported_onnx",
            "artifact",
            "ORT, transformers.exporters",
            "static-cache prefill and decode graphs of transformers' ONNX exporter, ORT CPU fusions",
            made_by="transformers.exporters",
        ),
        # the peers: the runtimes users pick instead, with their own converters and generation loops
        _gguf("f32", "fp32", "llama.cpp F32", "convert_hf_to_gguf F32", "fp32"),
        _gguf("q8_0", "int8", "llama.cpp Q8_0", "llama_model_quantize Q8_0 of the F32 file", "int8"),
        _gguf("q4_k_m", "int4", "llama.cpp Q4_K_M", "llama_model_quantize Q4_K_M of the F32 file", "int8"),
        _gguf("original", "int4", "llama.cpp, the source GGUF", "the checkpoint's own GGUF file", "int8", GGUF_SOURCES),
        _genai("fp32", "fp32", "ORT GenAI fp32", "model builder fp32, its own loop", "fp32"),
        _genai("int4", "int4", "ORT GenAI int4", "model builder int4 block 32, int8 activations (level 4)", "int8"),
        _genai(
            "int4_acc1", "int4", "ORT GenAI int4, fp32 act.", "model builder int4 block 32, accuracy level 1", "fp32"
        ),
        replace(
            _genai(
                "q4_exact",
                "int4",
                "ORT GenAI 4-bit exact grid",
                "model builder fp32 graph, GGUF-grid weights stored losslessly in 4 bits, fp32 activations",
                "fp32",
            ),
            sources=GGUF_SOURCES,
            gguf_type="Q4_1",
        ),
        Backend(
            "openvino_genai",
            "openvino_genai",
            "fp32",
            "stateful_ir",
            "artifact",
            "OpenVINO GenAI",
            "LLMPipeline on the stateful IR of transformers.exporters",
            made_by="transformers.exporters",
        ),
        Backend(
            "openvino_genai_q4_exact",
            "openvino_genai",
            "int4",
            "stateful_ir_q4_exact",
            "artifact",
            "OpenVINO GenAI 4-bit exact grid",
            "LLMPipeline on the stateful IR, GGUF-grid weights kept on their grid (u4), fp32 activations",
            sources=GGUF_SOURCES,
            arithmetic="fp32",
            made_by="transformers.exporters",
            gguf_type="Q4_1",
        ),
    )
}


def wildcard_values(rule: str, wildcard: str) -> list[str]:
    """The values of ``wildcard`` of ``rule`` that some backend uses (e.g. the TFLite precisions)."""
    return [b.wildcards[wildcard] for b in BACKENDS.values() if b.rule == rule]


def not_applicable(
    backend: str, source: str, cpu_flags: list[str] | None = None, gguf_types: dict[str, int] | None = None
) -> str | None:
    """Why ``backend`` does not apply to a model from ``source`` on a CPU with ``cpu_flags`` (None when it does).

    ``cpu_flags`` None skips the CPU check (e.g. a cluster whose nodes are not this one);
    ``gguf_types`` (tensor counts per ggml type of the source GGUF) None skips the type check.
    """
    b = BACKENDS[backend]
    if b.cpu_flags and cpu_flags is not None and not set(b.cpu_flags) & set(cpu_flags):
        return (
            f"not applicable on this CPU: {b.label} needs one of the CPU features "
            f"{', '.join(b.cpu_flags)} (bf16 instructions), which /proc/cpuinfo does not list"
        )
    if b.sources and source not in b.sources:
        return (
            f"not applicable: {b.label} needs weights dequantised from a GGUF file "
            f"(source {' or '.join(b.sources)}), this model's source is {source}"
        )
    if b.gguf_type and gguf_types is not None and b.gguf_type not in gguf_types:
        held = ", ".join(f"{n} {kind}" for kind, n in gguf_types.items())
        return (
            f"not applicable: {b.label} keeps {b.gguf_type} weights losslessly, and this model's GGUF "
            f"holds no {b.gguf_type} tensor ({held}); remove {backend} from `backends` for this model"
        )
    return None


def refuse_if_not_applicable(backend: str, prepared: Path) -> None:
    """Raise ``StageError("not applicable: ...")`` before any work when the prepared model (its
    ``prepare.json``: source and GGUF tensor types) rules ``backend`` out.

    The first step of a stage whose run was planned before the model was prepared: a ``pypi_gguf``
    model's GGUF types are known only once its wheel is fetched, and the exact-grid re-encoding of a
    model without Q4_1 weights would otherwise peak at several GB before finding so.
    """
    if backend not in BACKENDS:
        return
    try:
        info = json.loads((Path(prepared) / "prepare.json").read_text())
    except (OSError, ValueError):
        return  # an older prepared folder: the stage finds out itself
    why = not_applicable(backend, str(info.get("source", "")), None, info.get("gguf_types"))
    if why:
        raise StageError(why)
