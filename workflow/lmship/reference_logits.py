"""The PyTorch fp32 reference logits of the evaluation inputs (rule ``reference_logits``): what every
format is compared with."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .cli import command
from .evalset import load_inputs
from .files import atomic_output, stage_metrics
from .quality import perplexity

log = logging.getLogger(__name__)


def reference_logits(
    hf_dir: Path, inputs_npz: Path, out_npy: Path, metrics_json: Path | None = None, *, threads: int = 0
) -> Path:
    """Run PyTorch fp32 (eager, no grad, ``threads``; 0: torch's default) on every input sample; save
    logits ``[n, batch, seq, vocab]``.

    Written one sample at a time into a memory-mapped ``.npy``, so memory holds
    one sample's logits however large the evaluation set is.
    """
    from .runtimes import open_backend

    started = time.monotonic()
    input_ids, is_text = load_inputs(inputs_npz)
    session = open_backend("pytorch", Path(hf_dir), threads=threads)
    nll, count = 0.0, 0
    with atomic_output(Path(out_npy)) as tmp:
        out = None
        for i, sample in enumerate(input_ids):
            logits = session.run(sample).astype(np.float32)
            if out is None:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(input_ids), *logits.shape))
            out[i] = logits
            if is_text[i]:
                n = sample[..., 1:].size
                nll += np.log(perplexity(logits, sample)) * n
                count += n
        shape = list(out.shape)
        out.flush()
        del out
    stage_metrics(
        metrics_json,
        out_npy,
        started,
        shape=shape,
        perplexity_text=float(np.exp(nll / count)) if count else None,
        runtime=session.runtime,
        runtime_version=session.version,
        threads=session.threads_in_effect,
    )
    log.info("reference logits %s %s", out_npy, shape)
    return Path(out_npy)


#: ``python -m lmship reference_logits``: its options are the function's parameters.
main = command(reference_logits)
