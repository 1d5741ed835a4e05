"""The ONNX generation graphs of transformers' own exporter: the ``exported_onnx`` stage (rule ``exported_onnx``).

:func:`exported_onnx` writes the artifact folder ``results/{model}/ort_exporters/``: the prefill and
decode-step graphs that ``transformers.exporters``' ``OnnxExporter`` makes from ``model.generate`` with a
static cache (:func:`lmship.hf_export.export_ort`, fused for ONNX Runtime's CPU kernels), run by
:mod:`lmship.runtimes.ort_exporters`. Checked against PyTorch before it is kept: on prompts from the
evaluation prose the graphs must generate PyTorch's greedy tokens and, fed PyTorch's tokens, match its
logits (:func:`lmship.hf_export.check_against_pytorch`), the bounds of every fp32 conversion.
"""

from __future__ import annotations

import time
from pathlib import Path

from .files import write_json
from .generate import graph_prompts
from .hf_export import check_against_pytorch, export_ort

#: Prompts and greedy tokens of the gate.
GATE_PROMPTS, GATE_TOKENS = 2, 16
#: The exporter's graph fusions for ONNX Runtime's CPU execution provider.
FUSIONS = "cpu"


def exported_onnx(
    hf_dir: Path,
    prompts_npz: Path,
    out_dir: Path,
    *,
    prompt_len: int,
    max_len: int,
    max_rel_diff: float,
    max_mean_kld: float,
) -> dict:
    """Export ``hf_dir``'s generation steps for ONNX Runtime into ``out_dir`` and gate them against PyTorch.

    The prefill graph takes ``prompt_len`` tokens (no more than the gate's prompts hold); the static cache
    holds ``max_len`` slots and at least a gate prompt with its new tokens.
    """
    started = time.monotonic()
    prompts = graph_prompts(Path(prompts_npz), GATE_PROMPTS)
    prompt_len = min(prompt_len, *(len(p) for p in prompts))
    max_len = max(max_len, max(len(p) for p in prompts) + GATE_TOKENS)
    export_ort(Path(hf_dir), Path(out_dir), prompt_len=prompt_len, max_len=max_len, ort_fusions=FUSIONS)
    check = check_against_pytorch(
        Path(out_dir),
        Path(hf_dir),
        prompts,
        new_tokens=GATE_TOKENS,
        max_rel_diff=max_rel_diff,
        max_mean_kld=max_mean_kld,
        stage="exported_onnx",
    )
    seconds = round(time.monotonic() - started, 1)
    metrics = {
        "artifact": str(out_dir),
        "prompt_len": prompt_len,
        "max_len": max_len,
        "vs_pytorch": check,
        "seconds": seconds,
    }
    write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
