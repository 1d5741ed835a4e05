"""The machine's sustained read bandwidth at a given thread count: the decode roofline's denominator.

Decoding one token reads every weight once (and the KV cache), so a decoder
cannot be faster than bytes read / bandwidth. This stage sums a float32 array
much larger than the CPU's caches (``torch.sum``, which splits the reduction
over its intra-op threads) and reports GB/s read: the median of timed repeats
after warm-up. The generation summary divides each backend's bytes per token by it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .cli import command
from .files import write_json
from .host import cpu_model, limit_threads_env
from .runtimes.pytorch import set_threads
from .timing import timed_runs

log = logging.getLogger(__name__)

SIZE_MB = 1024  # the array read per pass: far above any last-level cache
WARMUP, REPEATS, MIN_SECONDS = 2, 10, 2.0


def bandwidth(out_json: Path, threads: int, *, size_mb: int = SIZE_MB) -> dict:
    """Measure sustained read bandwidth at ``threads`` threads; write it to ``out_json``."""
    limit_threads_env(threads)
    import torch

    set_threads(threads)
    n = size_mb * 2**20 // 4
    data = torch.from_numpy(np.random.default_rng(0).standard_normal(n, dtype=np.float32))
    latencies_ms = timed_runs(lambda: float(data.sum()), warmup=WARMUP, repeats=REPEATS, min_seconds=MIN_SECONDS)
    seconds = float(np.median(latencies_ms)) / 1e3
    result = {
        "threads": threads,
        "bytes_read": n * 4,
        "read_gb_s": round(n * 4 / seconds / 1e9, 2),
        "read_gb_s_best": round(n * 4 / (min(latencies_ms) / 1e3) / 1e9, 2),
        "repeats": len(latencies_ms),
        "method": "torch.sum over a float32 array (median of timed passes after warm-up)",
        "torch_version": torch.__version__,
        "cpu_model": cpu_model(),
    }
    log.info("read bandwidth at %d threads: %s", threads, result)
    write_json(out_json, result)
    return result


#: ``python -m lmship bandwidth``: its options are the function's parameters.
main = command(bandwidth)


if __name__ == "__main__":
    main()
