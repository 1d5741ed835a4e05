"""PyTorch int8: dynamic quantisation of every ``nn.Linear`` (the same-precision baseline).

The artifact is a folder with the model's config.json and the quantised
state dict (packed int8 weights); :func:`load_quantized` rebuilds the module
structure and loads it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .cli import command
from .files import atomic_output, stage_metrics
from .runtimes.pytorch import STATE_FILE, int8_linear

log = logging.getLogger(__name__)


def quantize_pytorch(hf_dir: Path, out_dir: Path, metrics_json: Path | None = None) -> dict:
    """Dynamically quantise ``hf_dir``'s Linear layers to int8 and save the result at ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM

    started = time.monotonic()
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    qmodel = int8_linear(model)
    with atomic_output(Path(out_dir)) as tmp:
        tmp.mkdir(parents=True)
        qmodel.config.save_pretrained(tmp)
        torch.save(qmodel.state_dict(), tmp / STATE_FILE)
    return stage_metrics(
        metrics_json,
        out_dir,
        started,
        quantize_seconds=round(time.monotonic() - started, 1),
        method="torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8)",
        torch_version=torch.__version__,
    )


#: ``python -m lmship quantize_pytorch``: its options are the function's parameters.
main = command(quantize_pytorch)


if __name__ == "__main__":
    main()
