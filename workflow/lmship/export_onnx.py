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
from .cli import FP32_GATE, command
from .decode_graph import GRAPH_FAMILIES, export_generation_graph
from .evalset import load_inputs
from .files import atomic_onnx, external_data_needed, stage_metrics
from .gate import FORWARD, Bounds, Gate, gate_for, lengths

log = logging.getLogger(__name__)


def export_onnx(
    hf_dir: Path,
    inputs_npz: Path,
    reference_npy: Path | None,
    out_onnx: Path,
    *,
    graph: str = FORWARD,
    host_npz: Path | None = None,
    length: int | None = None,
    opset: int,
    min_top1: float,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
    metrics_json: Path | None = None,
) -> dict:
    """Export the ``graph`` of ``hf_dir`` to an ONNX model at ``out_onnx``, checked in ONNX Runtime against
    PyTorch (:func:`lmship.gate.gate_for`); return its metrics.

    ``seq``: the forward pass over the evaluation windows (torch's dynamo exporter; external data above
    2 GB). ``prefill`` / ``decode``: the generation graph of :mod:`lmship.decode_graph` whose length
    (``length``: the prompt, or the cache slots) must match the host tables ``host_npz``.
    """
    import onnx
    import torch
    from transformers import AutoModelForCausalLM

    gate = gate_for(graph, inputs_npz, reference_npy, hf_dir, host_npz, Bounds(min_top1, max_rel_diff, max_mean_kld))
    if graph != FORWARD:
        return _export_generation_graph(
            graph, hf_dir, host_npz, out_onnx, gate, length=length, opset=opset, metrics_json=metrics_json
        )

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
        proto = onnx.load(str(tmp), load_external_data=False)
        nodes = len(proto.graph.node)
        opset_used = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=None)
        del proto
        check = gate("onnxruntime", tmp, stage="export_onnx") if gate is not None else None
    return stage_metrics(
        metrics_json,
        out_onnx,
        started,
        graph=graph,
        nodes=nodes,
        opset=opset_used,
        input_shape=list(np.shape(input_ids[0])),
        export_seconds=round(export_s, 1),
        external_data=external,
        vs_pytorch=check,
        torch_version=torch.__version__,
    )


def _export_generation_graph(
    graph: str,
    hf_dir: Path,
    host_npz: Path,
    out_onnx: Path,
    gate: Gate,
    *,
    length: int | None,
    opset: int,
    metrics_json: Path | None,
) -> dict:
    """The prefill or decode graph of ``hf_dir`` at ``out_onnx``, checked by ``gate`` before it is kept."""
    if length is None:
        raise StageError(f"the {graph} graph's export needs its length (the prompt tokens, or the cache slots)")
    import onnx

    prompt_len, max_len = lengths(graph, length, host_npz)
    started = time.monotonic()
    with atomic_onnx(Path(out_onnx)) as tmp:
        export_generation_graph(hf_dir, tmp, graph=graph, prompt_len=prompt_len, max_len=max_len, opset=opset)
        check = gate("onnxruntime", tmp, stage="export_onnx")
        nodes = len(onnx.load(str(tmp), load_external_data=False).graph.node)
    return stage_metrics(
        metrics_json,
        out_onnx,
        started,
        graph=graph,
        prompt_len=prompt_len,
        max_len=max_len,
        nodes=nodes,
        vs_pytorch=check,
    )


#: ``python -m lmship export_onnx``: its options are the function's parameters.
main = command(
    export_onnx,
    config={
        "opset": ("export", "opset"),
        **FP32_GATE,
    },
    choices={"graph": GRAPH_FAMILIES},
)


if __name__ == "__main__":
    main()
