"""The backends the workflow can time and evaluate (standard library only).

A backend is a runtime plus the artifact it runs. Adding one is a local
change: a line here and, if its artifact is new, the rule that makes it
(``workflow/rules/*.smk``; the rule's output path must equal ``artifact``).
``artifact`` is relative to ``results/{model}/`` and may contain ``{seq}``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: str  # torch | torch_int8 | ort | tflite (see lmship.runtimes)
    precision: str  # fp32 | fp16 | int8 | int4: selects the accuracy tolerance
    artifact: str
    label: str
    note: str = ""


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("pytorch", "torch", "fp32", "hf", "PyTorch fp32", "eager, torch.inference_mode, sdpa"),
        Backend(
            "pytorch-int8",
            "torch_int8",
            "int8",
            "pytorch_int8",
            "PyTorch int8",
            "quantize_dynamic of every nn.Linear (qint8)",
        ),
        Backend("onnx", "ort", "fp32", "seq{seq}/model.onnx", "ORT fp32", "exported ONNX"),
        Backend(
            "onnx-simplified",
            "ort",
            "fp32",
            "seq{seq}/model.simplified.onnx",
            "ORT fp32 (onnxsim)",
            "simplified ONNX",
        ),
        Backend(
            "onnx-int8-dynamic",
            "ort",
            "int8",
            "seq{seq}/model.int8-dynamic.onnx",
            "ORT int8 dynamic",
            "quantize_dynamic of every MatMul: the naive int8",
        ),
        Backend(
            "onnx-int8-block",
            "ort",
            "int8",
            "seq{seq}/model.int8-block.onnx",
            "ORT int8 block-wise",
            "MatMulNBits 8-bit, int8 activations per block of 32",
        ),
        Backend(
            "onnx-q4-exact",
            "ort",
            "int4",
            "seq{seq}/model.int8-q4exact.onnx",
            "ORT 4-bit exact grid",
            "GGUF-grid weights stored losslessly in 4 bits, fp32 compute",
        ),
        Backend("tflite-fp32", "tflite", "fp32", "seq{seq}/model_fp32.tflite", "TFLite fp32", "builtins only"),
        Backend("tflite-fp16", "tflite", "fp16", "seq{seq}/model_fp16.tflite", "TFLite fp16", "fp16 weights"),
        Backend(
            "tflite-int8",
            "tflite",
            "int8",
            "seq{seq}/model_int8.tflite",
            "TFLite int8",
            "dynamic-range quantisation",
        ),
    )
}

PRECISIONS = ("fp32", "fp16", "int8", "int4")
REFERENCE = "pytorch"


def get(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise KeyError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}") from None
