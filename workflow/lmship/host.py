"""Facts about this machine (standard library only)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

_CPUINFO = Path("/proc/cpuinfo")
_MEMINFO = Path("/proc/meminfo")
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_int8", "amx_bf16")


def _cpuinfo_field(name: str) -> str | None:
    try:
        for line in _CPUINFO.read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name, as /proc/cpuinfo gives it."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


#: CPU flags (/proc/cpuinfo) of which a bf16 run needs one: AVX-512 BF16 or AMX.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> list[str]:
    """Vector-extension flags that matter for the kernels (AVX2, AVX-512, VNNI, ...)."""
    have = set((_cpuinfo_field("flags") or "").split())
    return [f for f in VECTOR_FLAGS if f in have]


def total_memory_mb() -> int | None:
    """Physical memory in MB, or None where /proc/meminfo is missing."""
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def limit_threads_env(threads: int) -> None:
    """Pin the OpenMP / BLAS pools too, before any runtime is imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"


_THP_ENABLED = Path("/sys/kernel/mm/transparent_hugepage/enabled")
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"


def transparent_huge_pages() -> str | None:
    """The kernel's transparent huge page mode (``always``, ``madvise``, ``never``), or None where unknown."""
    try:
        text = _THP_ENABLED.read_text()
    except OSError:
        return None
    chosen = [word.strip("[]") for word in text.split() if word.startswith("[")]
    return chosen[0] if chosen else None


def with_huge_pages(env: dict[str, str]) -> dict[str, str]:
    """``env`` with glibc's malloc asking the kernel for transparent huge pages (``glibc.malloc.hugetlb=1``).

    Where THP runs in ``madvise`` mode, a runtime's weights otherwise sit in 4 KiB pages, and a
    matmul that walks its packed weights in strides pays a TLB miss per page (ONNX Runtime's fp32
    decode step measured slower; see docs/measuring.md). The benchmark sets this for every backend's
    process alike; glibc before 2.35 ignores the tunable, and ``always`` / ``never`` modes do not
    need it or refuse it. Other tunables in ``GLIBC_TUNABLES`` are kept.
    """
    kept = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and not t.startswith("glibc.malloc.hugetlb=")]
    return {**env, "GLIBC_TUNABLES": ":".join([*kept, HUGE_PAGES_TUNABLE])}
