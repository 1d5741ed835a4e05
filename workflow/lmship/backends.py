"""The backend catalogue: the one list of what the workflow can time and evaluate.

A backend is a runtime plus the artifact it runs. The artifact is named by the
rule that makes it and that rule's output (``rule``, ``output``) with the
rule's own wildcards fixed (``wildcards``, e.g. the TFLite precision), so the
workflow derives every path from the rule (``rules.<rule>.output.<output>``)
and nothing here repeats a path. A backend's name is its artifact's file stem
(``tflite_fp16`` runs ``tflite_fp16.tflite``); the reference ``pytorch`` runs
the prepared Hugging Face folder ``hf/``.

Adding a backend: a line here and, if its artifact is new, the rule that makes
it. The schema's ``backends`` enum and ``tolerances`` keys must list the same
names and precisions (``tests/test_catalogue.py`` checks). Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

RUNTIMES = ("pytorch", "pytorch_int8", "ort", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
REFERENCE = "pytorch"
#: Model sources whose weights come from a GGUF file (and may sit on its quantisation grid).
GGUF_SOURCES = ("pypi_gguf", "gguf")


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

    def __hash__(self) -> int:
        return hash(self.name)


def _tflite(precision: str, label: str, note: str) -> Backend:
    return Backend(
        f"tflite_{precision}", "tflite", precision, "tflite", "tflite", label, note, {"precision": precision}
    )


def _quantized_onnx(variant: str, precision: str, label: str, note: str, sources: tuple[str, ...] = ()) -> Backend:
    return Backend(
        f"onnx_{variant}", "ort", precision, "quantize_onnx", "onnx", label, note, {"variant": variant}, sources
    )


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("pytorch", "pytorch", "fp32", "prepare_model", "model", "PyTorch fp32", "eager, inference_mode, sdpa"),
        Backend(
            "pytorch_int8",
            "pytorch_int8",
            "int8",
            "quantize_pytorch",
            "model",
            "PyTorch int8",
            "quantize_dynamic of every nn.Linear (qint8)",
        ),
        Backend("onnx", "ort", "fp32", "export_onnx", "onnx", "ORT fp32", "exported ONNX"),
        Backend("onnx_simplified", "ort", "fp32", "simplify_onnx", "onnx", "ORT fp32 (onnxsim)", "simplified ONNX"),
        _quantized_onnx("int8_dynamic", "int8", "ORT int8 dynamic", "quantize_dynamic of every MatMul: the naive int8"),
        _quantized_onnx("int8_block", "int8", "ORT int8 block-wise", "MatMulNBits 8-bit, int8 activations per block"),
        _quantized_onnx(
            "q4_exact",
            "int4",
            "ORT 4-bit exact grid",
            "GGUF-grid weights stored losslessly in 4 bits",
            sources=GGUF_SOURCES,
        ),
        _tflite("fp32", "TFLite fp32", "builtins only"),
        _tflite("fp16", "TFLite fp16", "fp16 weights"),
        _tflite("int8", "TFLite int8", "dynamic-range quantisation"),
    )
}


def wildcard_values(rule: str, wildcard: str) -> list[str]:
    """The values of ``wildcard`` of ``rule`` that some backend uses (e.g. the TFLite precisions)."""
    return [b.wildcards[wildcard] for b in BACKENDS.values() if b.rule == rule]


def not_applicable(backend: str, source: str) -> str | None:
    """Why ``backend`` does not apply to a model from ``source`` (None when it does)."""
    b = BACKENDS[backend]
    if b.sources and source not in b.sources:
        return (
            f"not applicable: {b.label} needs weights dequantised from a GGUF file "
            f"(source {' or '.join(b.sources)}), this model's source is {source}"
        )
    return None
