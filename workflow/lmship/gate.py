"""What a conversion is checked against: the graph it converts decides, the stage does not.

Every conversion stage (``export_onnx``, ``simplify_onnx``, ``savedmodel``, ``tflite``,
``openvino_ir``) takes the ``{graph}`` it converts as a parameter and checks its output
with the gate :func:`gate_for` gives:

- ``seq``, the forward graph: the evaluation set against PyTorch's logits
  (:func:`lmship.validate.validate_artifact`).
- ``prefill`` and ``decode``, the generation graphs of :mod:`lmship.decode_graph`: prompts
  cut from the evaluation prose against transformers' own KV-cache generation
  (:func:`lmship.generate.validate_graph`): the prefill graph's last logits, or 8
  teacher-forced decode steps whose K/V the host writes into the cache.

Either way top-1 agreement at every precision, and at fp32 the logits themselves (largest
difference over the reference logits' standard deviation, mean KL divergence).
``quantize_onnx`` needs no gate of its own (it rewrites Gemm to MatMul itself), nor does
``compress_openvino`` (its exact-grid form proves its weights; NNCF's are judged by their text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import StageError
from .decode_graph import FORWARD, GRAPHS
from .evaluate import compare_with_reference
from .generate import graph_prompts, load_host_tables, validate_graph
from .validate import check_gate, validate_artifact

#: Prompts and teacher-forced decode steps of each generation graph's gate.
GATE_PROMPTS, GATE_STEPS = 2, 8

#: ``gate(runtime, artifact, *, stage, run=None) -> figures``: raises StageError when the
#: artifact misses the gate; ``run`` is the in-memory model where nothing is on disk yet
#: (the Keras model before its SavedModel is written).
Gate = Callable[..., dict]


@dataclass(frozen=True)
class Bounds:
    """The limits of one conversion: top-1 agreement (%), and for fp32 the logits themselves."""

    min_top1: float
    max_rel_diff: float | None = None  # max |Δlogit| / std(reference logits)
    max_mean_kld: float | None = None  # mean KL divergence (nats)


@dataclass(frozen=True)
class ForwardGate:
    """The forward graph's check: the evaluation set against PyTorch's logits."""

    inputs_npz: Path
    reference_npy: Path
    bounds: Bounds

    def __call__(self, runtime: str, artifact: Path, *, stage: str, run=None) -> dict:
        b = self.bounds
        if run is None:
            return validate_artifact(
                runtime,
                artifact,
                self.inputs_npz,
                self.reference_npy,
                min_top1=b.min_top1,
                stage=stage,
                max_rel_diff=b.max_rel_diff,
                max_mean_kld=b.max_mean_kld,
            )
        return check_gate(
            compare_with_reference(run, self.inputs_npz, self.reference_npy),
            min_top1=b.min_top1,
            stage=stage,
            artifact=artifact,
            max_rel_diff=b.max_rel_diff,
            max_mean_kld=b.max_mean_kld,
        )


@dataclass(frozen=True)
class GraphGate:
    """A generation graph's check: PyTorch's KV-cache generation on prompts from the evaluation prose."""

    graph: str
    hf_dir: Path
    host_npz: Path
    inputs_npz: Path
    bounds: Bounds

    def __call__(self, runtime: str, artifact: Path, *, stage: str, run=None) -> dict:
        b = self.bounds
        return validate_graph(
            self.graph,
            runtime,
            artifact,
            self.host_npz,
            self.hf_dir,
            graph_prompts(self.inputs_npz, GATE_PROMPTS),
            steps=GATE_STEPS,
            min_top1=b.min_top1,
            max_rel_diff=b.max_rel_diff,
            max_mean_kld=b.max_mean_kld,
            run=run,
            stage=stage,
        )


def gate_for(
    graph: str,
    inputs_npz: Path | None,
    reference_npy: Path | None,
    hf_dir: Path | None,
    host_npz: Path | None,
    bounds: Bounds,
) -> Gate | None:
    """The gate of a conversion of ``graph``; None for a forward graph given nothing to check against."""
    if graph == FORWARD:
        if inputs_npz is None or reference_npy is None:
            return None
        return ForwardGate(Path(inputs_npz), Path(reference_npy), bounds)
    if graph not in GRAPHS:
        raise StageError(f"unknown graph {graph!r}; expected {FORWARD!r} or one of {GRAPHS}")
    missing = [
        name for name, v in (("hf_dir", hf_dir), ("host_npz", host_npz), ("inputs_npz", inputs_npz)) if v is None
    ]
    if missing:
        raise StageError(f"the {graph} graph is checked against PyTorch's generation: give {', '.join(missing)}")
    return GraphGate(graph, Path(hf_dir), Path(host_npz), Path(inputs_npz), bounds)


def gate_inputs(smk) -> dict:
    """The keyword arguments of a conversion stage's gate, read off its Snakemake rule
    (``{graph}`` wildcard, the inputs of ``graph_check`` and the ``conversion_gate`` params)."""
    given = dict(smk.input.items())
    optional = {k: Path(given[k]) if k in given else None for k in ("inputs", "reference", "hf", "host")}
    return {
        "graph": smk.wildcards.graph,
        "inputs_npz": optional["inputs"],
        "reference_npy": optional["reference"],
        "hf_dir": optional["hf"],
        "host_npz": optional["host"],
        "min_top1": smk.params.min_top1,
        "max_rel_diff": smk.params.max_rel_diff,
        "max_mean_kld": smk.params.max_mean_kld,
    }


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
