"""The conversion stages of the generation graphs (prefill, decode step), each checked against PyTorch.

The rules ``export_onnx``, ``simplify_onnx``, ``savedmodel`` and ``tflite`` take a
``{graph}`` wildcard: ``seq`` is the forward graph (the functions of
:mod:`lmship.export_onnx` and friends, checked on the evaluation set's logits),
``prefill`` and ``decode`` are the generation graphs of :mod:`lmship.decode_graph`,
made here. Their gate (:class:`GraphGate`) runs the graph on prompts cut from
the evaluation prose and compares its logits with transformers' own KV-cache
generation (:func:`lmship.generation.validate_graph`): the prefill graph's last
logits, or 8 teacher-forced decode steps whose K/V the host writes into the cache;
top-1 agreement at every precision, and at fp32 the logits themselves (largest
difference over the reference logits' standard deviation, mean KL divergence).
``quantize_onnx`` needs no stage of its own (it rewrites Gemm to MatMul itself), nor does
``compress_openvino`` (its exact-grid form proves its weights; NNCF's are judged by their text).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from . import StageError
from .decode_graph import GRAPHS, export_generation_graph, graph_to_savedmodel, simplify_graph
from .files import atomic_output, load_onnx, size_bytes, stage_metrics
from .generation import graph_prompts, load_host_tables, validate_graph

log = logging.getLogger(__name__)

#: Prompts and teacher-forced decode steps of each conversion gate.
GATE_PROMPTS, GATE_STEPS = 2, 8


@dataclass(frozen=True)
class GraphGate:
    """The check of a converted generation graph: PyTorch's logits on prompts from the evaluation prose."""

    graph: str
    hf_dir: Path
    host_npz: Path
    inputs_npz: Path
    min_top1: float
    max_rel_diff: float | None = None  # fp32 conversions: max |Δlogit| / std(reference logits)
    max_mean_kld: float | None = None  # fp32 conversions: mean KL divergence (nats)

    def __call__(self, runtime: str, artifact: Path, *, stage: str, run=None) -> dict:
        prompts = graph_prompts(self.inputs_npz, GATE_PROMPTS)
        return validate_graph(
            self.graph,
            runtime,
            artifact,
            self.host_npz,
            self.hf_dir,
            prompts,
            steps=GATE_STEPS,
            min_top1=self.min_top1,
            max_rel_diff=self.max_rel_diff,
            max_mean_kld=self.max_mean_kld,
            run=run,
            stage=stage,
        )


def lengths(graph: str, length: int, host_npz: Path) -> tuple[int, int]:
    """(prompt_len, max_len) of the ``graph`` of ``length`` (P of prefill, cache slots of decode)."""
    if graph not in GRAPHS:
        raise StageError(f"unknown generation graph {graph!r}; expected one of {GRAPHS}")
    host = load_host_tables(host_npz)
    prompt_len, max_len = int(host["prompt_len"]), int(host["max_len"])
    if graph == "prefill" and length != prompt_len:
        raise StageError(
            f"a prefill graph of {length} tokens does not match the host tables' prompt of {prompt_len} "
            f"({host_npz}); the prefill length is generation.prompt_tokens"
        )
    if graph == "decode" and length != max_len:
        raise StageError(f"a decode graph of {length} cache slots does not match {host_npz}'s max_len {max_len}")
    return prompt_len, max_len


def export_generation(
    graph: str,
    hf_dir: Path,
    inputs_npz: Path,
    host_npz: Path,
    out_onnx: Path,
    *,
    length: int,
    opset: int,
    min_top1: float,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
    metrics_json: Path | None = None,
) -> dict:
    """Export the ``graph`` of ``hf_dir`` to ``out_onnx`` and check it in ONNX Runtime."""
    prompt_len, max_len = lengths(graph, length, host_npz)
    gate = GraphGate(graph, Path(hf_dir), Path(host_npz), Path(inputs_npz), min_top1, max_rel_diff, max_mean_kld)
    started = time.monotonic()
    with atomic_output(Path(out_onnx)) as tmp:
        export_generation_graph(hf_dir, tmp, graph=graph, prompt_len=prompt_len, max_len=max_len, opset=opset)
        check = gate("onnxruntime", tmp, stage="export_onnx")
        nodes = len(load_onnx(tmp).graph.node)
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


def simplify_generation(
    graph: str,
    in_onnx: Path,
    hf_dir: Path,
    inputs_npz: Path,
    host_npz: Path,
    out_onnx: Path,
    *,
    min_top1: float,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
    metrics_json: Path | None = None,
) -> dict:
    """onnxsim on a generation graph, checked in ONNX Runtime."""
    gate = GraphGate(graph, Path(hf_dir), Path(host_npz), Path(inputs_npz), min_top1, max_rel_diff, max_mean_kld)
    started = time.monotonic()
    with atomic_output(Path(out_onnx)) as tmp:
        simplify_graph(in_onnx, tmp)
        check = gate("onnxruntime", tmp, stage="simplify_onnx")
        nodes = len(load_onnx(tmp).graph.node)
    return stage_metrics(
        metrics_json,
        out_onnx,
        started,
        graph=graph,
        size_mb_before=round(size_bytes(in_onnx) / 1e6, 1),
        nodes_after=nodes,
        vs_pytorch=check,
    )


def savedmodel_generation(
    graph: str,
    in_onnx: Path,
    hf_dir: Path,
    inputs_npz: Path,
    host_npz: Path,
    out_dir: Path,
    *,
    min_top1: float,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
    onnx2tf_options: dict | None = None,
    fast_weight_matmul: bool = True,
    metrics_json: Path | None = None,
) -> dict:
    """onnx2tf SavedModel of a generation graph (named inputs / outputs); the Keras model is checked first."""
    gate = GraphGate(graph, Path(hf_dir), Path(host_npz), Path(inputs_npz), min_top1, max_rel_diff, max_mean_kld)
    started = time.monotonic()
    check = graph_to_savedmodel(
        in_onnx,
        out_dir,
        onnx2tf_options=onnx2tf_options,
        fast_weight_matmul=fast_weight_matmul,
        check=lambda run: gate("keras", out_dir, stage="savedmodel", run=run),
    )
    return stage_metrics(
        metrics_json,
        out_dir,
        started,
        graph=graph,
        onnx2tf_options=onnx2tf_options,
        fast_weight_matmul=fast_weight_matmul,
        vs_pytorch=check,
    )


def tflite_gate(
    graph: str,
    hf_dir: Path,
    inputs_npz: Path,
    host_npz: Path,
    *,
    precision: str,
    min_top1: float,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
):
    """The ``check(tflite_file) -> metrics`` that :func:`lmship.tflite.tflite` runs on a generation graph
    (give the logit bounds for fp32 only)."""
    gate = GraphGate(graph, Path(hf_dir), Path(host_npz), Path(inputs_npz), min_top1, max_rel_diff, max_mean_kld)
    return lambda artifact: gate("litert", artifact, stage=f"tflite_{precision}")


def openvino_generation(
    graph: str,
    in_onnx: Path,
    hf_dir: Path,
    inputs_npz: Path,
    host_npz: Path,
    out_xml: Path,
    *,
    min_top1: float,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
    census_json: Path | None = None,
    metrics_json: Path | None = None,
) -> Path:
    """The fp32 OpenVINO IR of a generation graph, checked at f32 against PyTorch before it is written."""
    from .openvino import openvino_ir

    gate = GraphGate(graph, Path(hf_dir), Path(host_npz), Path(inputs_npz), min_top1, max_rel_diff, max_mean_kld)
    return openvino_ir(
        in_onnx,
        out_xml,
        census_json=census_json,
        metrics_json=metrics_json,
        gate=lambda xml: gate("openvino", xml, stage="openvino_ir"),
    )
