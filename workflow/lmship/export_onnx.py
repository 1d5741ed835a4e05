"""Export the PyTorch model's logits to ONNX, then check it.

The export uses torch's default (dynamo) exporter with static shapes
``[batch, seq_len]``; a model whose weights pass 2 GB keeps them in
``<name>.data`` beside the graph (ONNX Runtime, its quantisers and OpenVINO
read it). The graph is checked with ``onnx.checker`` and run in ONNX Runtime
against the PyTorch reference, and the stage fails if it misses the conversion
gate (:func:`lmship.validate.check_gate`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from . import StageError, dynamo_export
from .cli import add_checked_stage_arguments, config_default, parser
from .evalset import load_inputs
from .files import atomic_onnx, external_data_needed, stage_metrics
from .logs import log_to
from .validate import validate_artifact

log = logging.getLogger(__name__)


def export_onnx(
    hf_dir: Path,
    inputs_npz: Path,
    reference_npy: Path,
    out_onnx: Path,
    *,
    opset: int,
    min_top1: float,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
    metrics_json: Path | None = None,
) -> dict:
    """Export ``hf_dir`` to a single-file ONNX model at ``out_onnx``; return its metrics."""
    import onnx
    import torch
    from transformers import AutoModelForCausalLM

    input_ids, _ = load_inputs(inputs_npz)
    example = torch.from_numpy(input_ids[0])
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    model.config.use_cache = False

    class LogitsOnly(torch.nn.Module):
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return self.lm(input_ids=input_ids, use_cache=False).logits

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    external = external_data_needed(weight_bytes)
    started = time.monotonic()
    with atomic_onnx(Path(out_onnx)) as tmp:
        try:
            program = dynamo_export.export(
                LogitsOnly(model).eval(), (example,), opset=opset, input_names=["input_ids"], output_names=["logits"]
            )
        except Exception as exc:
            raise StageError(
                f"ONNX export of {hf_dir} failed ({model.config.model_type}, torch {torch.__version__}): "
                f"{type(exc).__name__}: {str(exc)[:2000]}"
            ) from exc
        program.save(str(tmp), external_data=external)
        del program
        onnx.checker.check_model(str(tmp), full_check=False)
        export_s = time.monotonic() - started
        graph = onnx.load(str(tmp), load_external_data=False)
        nodes = len(graph.graph.node)
        opset_used = max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=None)
        del graph
        check = validate_artifact(
            "onnxruntime",
            tmp,
            inputs_npz,
            reference_npy,
            min_top1=min_top1,
            stage="export_onnx",
            max_rel_diff=max_rel_diff,
            max_mean_kld=max_mean_kld,
        )
    return stage_metrics(
        metrics_json,
        out_onnx,
        started,
        nodes=nodes,
        opset=opset_used,
        input_shape=list(np.shape(input_ids[0])),
        export_seconds=round(export_s, 1),
        external_data=external,
        vs_pytorch=check,
        torch_version=torch.__version__,
    )


def main(argv: list[str] | None = None) -> None:
    p = parser("export_onnx", __doc__)
    add_checked_stage_arguments(p, "--model", "prepared HF folder")
    p.add_argument("--opset", type=int, default=config_default("export", "opset"))
    args = p.parse_args(argv)
    with log_to(args.log):
        export_onnx(
            args.model,
            args.inputs,
            args.reference,
            args.out,
            opset=args.opset,
            min_top1=args.min_top1,
            max_rel_diff=args.max_rel_diff,
            max_mean_kld=args.max_mean_kld,
            metrics_json=args.metrics,
        )


if __name__ == "__main__":
    main()
