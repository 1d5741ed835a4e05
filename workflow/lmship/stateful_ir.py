"""The stateful OpenVINO IR that OpenVINO GenAI runs: the ``stateful_ir`` stage (rule ``stateful_ir``).

:func:`stateful_ir` writes the artifact folder ``results/{model}/openvino_genai/``: one stateful IR
made by transformers' own OpenVINO exporter (:func:`lmship.hf_export.export_openvino`: the KV cache
as OpenVINO state, laid out for ``LLMPipeline``), with the tokenizer IRs of
``openvino_tokenizers``, checked against PyTorch before it is kept: on prompts from the
evaluation prose the IR must generate PyTorch's greedy tokens and, fed PyTorch's tokens, match
its logits (:func:`lmship.hf_export.check_against_pytorch`).
"""

from __future__ import annotations

import time
from pathlib import Path

from .files import write_json
from .generate import graph_prompts
from .hf_export import check_against_pytorch, export_openvino

#: Prompts and greedy tokens of the gate.
GATE_PROMPTS, GATE_TOKENS = 2, 16


def stateful_ir(
    hf_dir: Path,
    prompts_npz: Path,
    out_dir: Path,
    *,
    max_len: int,
    max_rel_diff: float,
    max_mean_kld: float,
) -> dict:
    """Export ``hf_dir`` as a stateful IR for OpenVINO GenAI into ``out_dir`` and gate it against PyTorch."""
    started = time.monotonic()
    prompts = graph_prompts(Path(prompts_npz), GATE_PROMPTS)
    # the cache holds a generation of max_len tokens and the gate's prompts with their new tokens
    max_len = max(max_len, max(len(p) for p in prompts) + GATE_TOKENS)
    export_openvino(Path(hf_dir), Path(out_dir), max_len=max_len, tokenizer=True)
    check = check_against_pytorch(
        Path(out_dir),
        Path(hf_dir),
        prompts,
        new_tokens=GATE_TOKENS,
        max_rel_diff=max_rel_diff,
        max_mean_kld=max_mean_kld,
        stage="stateful_ir",
    )
    seconds = round(time.monotonic() - started, 1)
    metrics = {"artifact": str(out_dir), "max_len": max_len, "vs_pytorch": check, "seconds": seconds}
    write_json(Path(out_dir) / "metrics.json", metrics)
    return metrics
