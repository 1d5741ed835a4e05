"""Run one stage alone: ``python -m lmship <stage> --help`` (from the workflow/ folder).

The subcommand is the stage's rule name; it calls ``main()`` of the module
holding the stage's function.
"""

from __future__ import annotations

import importlib
import sys

# subcommand (= rule name) -> "module" or "module:main function"
STAGES = {
    "prepare_model": "prepare_model",
    "eval_text": "eval_text",
    "eval_inputs": "eval_inputs",
    "reference_logits": "reference_logits",
    "export_onnx": "export_onnx",
    "simplify_onnx": "simplify_onnx",
    "savedmodel": "savedmodel",
    "tflite": "tflite",
    "quantize_onnx": "quantize_onnx",
    "quantize_pytorch": "quantize_pytorch",
    "openvino_ir": "openvino_ir",
    "compress_openvino": "compress_openvino",
    "timing": "timing:main_once",
    "evaluate": "evaluate",
    "machine_limit": "machine_limit",
    "bandwidth": "bandwidth",
    "generation": "generation",
    "generate_once": "generation:main_once",
    "host_tables": "host_tables",
    "generation_plot": "generation_plot",
    "accuracy_table": "accuracy_table",
    "summary": "summary",
    "plot": "plot",
    "quality_plot": "quality_plot",
    "ship_plot": "ship_plot",
    "stage_costs": "sizes",
    "config_docs": "config_docs",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        print(f"usage: python -m lmship {{{','.join(STAGES)}}} [--help]", file=sys.stderr)
        sys.exit(2)
    module, _, function = STAGES[sys.argv[1]].partition(":")
    getattr(importlib.import_module(f"lmship.{module}"), function or "main")(sys.argv[2:])


if __name__ == "__main__":
    main()
