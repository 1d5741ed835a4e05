"""The stateful IR of OpenVINO GenAI with the checkpoint's exact grid: the ``stateful_ir_q4_exact`` stage
(rule ``stateful_ir_q4_exact``).

:func:`stateful_ir_q4_exact` writes ``results/{model}/openvino_genai_q4_exact/``: the folder of
:func:`lmship.stateful_ir.stateful_ir` with every IR weight that sits on the checkpoint's GGUF grid
stored on that grid (u4 codes and the float zero point, fp32 activations:
:func:`lmship.compress_openvino.exact_grid_ir`, proven within an ulp of the originals), so OpenVINO
GenAI's pipeline runs the lossless 4-bit weights with its own cache and loop. Gated against PyTorch
like the fp32 IR: on prompts from the evaluation prose it must generate PyTorch's greedy tokens and,
fed PyTorch's tokens, match its logits. A model with no weight on a Q4_1 grid is not applicable.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .compress_openvino import exact_grid_openvino
from .files import atomic_output, read_json, write_json
from .generate import graph_prompts
from .hf_export import check_against_pytorch
from .stateful_ir import GATE_PROMPTS, GATE_TOKENS


def stateful_ir_q4_exact(
    stateful_dir: Path,
    hf_dir: Path,
    prompts_npz: Path,
    out_dir: Path,
    *,
    max_rel_diff: float,
    max_mean_kld: float,
) -> dict:
    """Copy the stateful-IR folder ``stateful_dir`` into ``out_dir`` with its IR's weights on their GGUF grid,
    and gate it against PyTorch (the greedy tokens and the logits, as :func:`stateful_ir` does)."""
    started = time.monotonic()
    stateful_dir, out_dir = Path(stateful_dir), Path(out_dir)
    source = read_json(stateful_dir / "metrics.json")
    xml = stateful_dir / "openvino_model.xml"
    model_files = {xml.name, xml.with_suffix(".bin").name, "metrics.json"}
    with atomic_output(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for item in stateful_dir.iterdir():  # tokenizer IRs, configs, the export's manifest
            if item.is_file() and item.name not in model_files:
                try:
                    os.link(item, tmp / item.name)
                except OSError:
                    shutil.copy2(item, tmp / item.name)
        exact_grid_openvino(
            xml, tmp / xml.name, metrics_json=tmp / "exact_grid.json", backend="openvino_genai_q4_exact"
        )
        grid = read_json(tmp / "exact_grid.json")
    prompts = graph_prompts(Path(prompts_npz), GATE_PROMPTS)
    check = check_against_pytorch(
        out_dir,
        Path(hf_dir),
        prompts,
        new_tokens=GATE_TOKENS,
        max_rel_diff=max_rel_diff,
        max_mean_kld=max_mean_kld,
        stage="stateful_ir_q4_exact",
    )
    metrics = {
        "artifact": str(out_dir),
        "max_len": source.get("max_len"),
        "recipe": grid.get("recipe"),
        "verified": grid.get("verified"),
        "weights": grid.get("weights"),
        "vs_pytorch": check,
        "seconds": round(time.monotonic() - started, 1),
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics
