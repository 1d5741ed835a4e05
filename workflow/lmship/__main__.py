"""Run one stage alone: ``python -m lmship <stage> --help`` (from the workflow/ folder)."""

from __future__ import annotations

import importlib
import sys

STAGES = {
    "prepare": "sources",
    "evalset": "evalset",
    "export": "export",
    "simplify": "simplify",
    "savedmodel": "savedmodel",
    "tflite": "tflite",
    "onnx-int8": "onnx_int8",
    "torch-int8": "torch_int8",
    "timing": "timing",
    "evaluate": "evaluate",
    "machine": "machine",
    "summary": "summary",
    "plot": "plot",
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in STAGES:
        print(f"usage: python -m lmship {{{','.join(STAGES)}}} [--help]", file=sys.stderr)
        sys.exit(2)
    module = importlib.import_module(f"lmship.{STAGES[sys.argv[1]]}")
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
