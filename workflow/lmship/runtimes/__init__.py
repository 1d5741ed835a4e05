"""The runtimes: one module each, registered here once; everything else is derived from them.

A runtime module (``lmship/runtimes/<name>.py``) declares:

``NAME``        its one spelling (the ``runtime`` of a backend in :mod:`lmship.backends`)
``GENERATES``   how it generates text: ``"graphs"`` (the workflow's prefill / decode graphs, run by
                the host loop of :mod:`lmship.generate`, which owns the K/V cache), ``"own"``
                (its own cache and loop: :func:`generate` of the module) or ``None``
``version()``   the installed runtime's version
``open(artifact, threads, **options) -> Session``
                a forward pass: ``int64 [batch, seq]`` token ids to ``float32 [batch, seq, vocab]``
                logits, with ``threads`` intra-op threads set in the runtime and read back
                (``Session.threads_in_effect``; None where the runtime cannot tell)
``open_graph(path, threads, **options)``  (``"graphs"`` runtimes) a ``feeds -> outputs`` callable
                of one generation graph, inputs and outputs by name
``generate(artifact, prompts, new_tokens, *, threads, **options) -> GenerationResult``
                (``"own"`` runtimes) greedy generation, with time to first token and per-token times
``not_applicable(config) -> str | None``  (optional) why the runtime cannot take a model of this
                Hugging Face ``config.json``, said before any job

Importing this package, or a runtime module, loads no runtime: each imports its library when it
opens something, so a process only loads the runtime it uses, and the Snakefile can read the
registry while it parses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from .. import StageError

if TYPE_CHECKING:
    import numpy as np

#: The registered runtimes, in the order the tables list them.
NAMES = ("pytorch", "onnxruntime", "litert", "openvino", "ort_exporters", "llamacpp", "ort_genai", "openvino_genai")
#: What an exported-graphs folder (transformers.exporters, :mod:`lmship.hf_export`) says it holds and how it was made.
EXPORT_MANIFEST = "lmship_export.json"


@dataclass
class Session:
    """A loaded artifact: ``run(input_ids) -> logits``, and the threads its runtime runs."""

    runtime: str
    version: str
    threads: int
    run: Callable[[np.ndarray], np.ndarray]
    threads_in_effect: int | None = None
    keepalive: object = None


@dataclass
class GenerationResult:
    """Token ids and timings of greedy generation over several prompts."""

    runtime: str
    threads: int
    tokens: list[list[int]]  # generated ids per prompt (prompt excluded)
    ttft_ms: list[float]  # time to first token per prompt (prefill incl. any extra prompt steps)
    decode_ms: list[list[float]]  # per generated token after the first, per prompt
    load_s: float = 0.0
    prompt_lens: list[int] = field(default_factory=list)
    logits: list[list[np.ndarray]] | None = None  # per prompt, per generated token (when collected)
    threads_in_effect: int | None = None

    def summary(self) -> dict:
        import numpy as np

        steps = np.array([t for per in self.decode_ms for t in per], dtype=np.float64)
        ttft = np.array(self.ttft_ms, dtype=np.float64)
        prompt_tokens = sum(self.prompt_lens)
        return {
            "runtime": self.runtime,
            "threads": self.threads,
            "prompts": len(self.tokens),
            "new_tokens": len(self.tokens[0]) if self.tokens else 0,
            "load_s": round(self.load_s, 2),
            "ttft_ms_median": round(float(np.median(ttft)), 2) if ttft.size else None,
            "decode_ms_median": round(float(np.median(steps)), 2) if steps.size else None,
            "decode_ms_p90": round(float(np.percentile(steps, 90)), 2) if steps.size else None,
            "generated_tok_s": round(1000.0 / float(np.median(steps)), 2) if steps.size else None,
            "prompt_tok_s": round(prompt_tokens / (ttft.sum() / 1000.0), 1) if ttft.size else None,
        }


def greedy_over(
    runtime: str,
    prompts: list[np.ndarray],
    new_tokens: int,
    one: Callable[[np.ndarray, int], tuple[list[int], float, list[float]]],
    *,
    threads: int,
    threads_in_effect: int | None,
    load_s: float,
    warmup: bool,
) -> GenerationResult:
    """The result of an own-loop runtime's greedy generation: ``one(prompt, count)`` generates ``count``
    tokens from a fresh cache and returns (tokens, time to first token in ms, ms of each later token);
    ``warmup`` runs it once on the first prompt first (2 tokens, not recorded)."""
    import numpy as np

    if warmup:
        one(np.asarray(prompts[0]), 2)
    result = GenerationResult(runtime, threads, [], [], [], load_s, [])
    result.threads_in_effect = threads_in_effect
    for prompt in prompts:
        tokens, ttft, steps = one(np.asarray(prompt), new_tokens)
        result.tokens.append(tokens)
        result.ttft_ms.append(ttft)
        result.decode_ms.append(steps)
        result.prompt_lens.append(int(np.asarray(prompt).size))
    return result


def get(name: str) -> ModuleType:
    """The module of runtime ``name``."""
    if name not in NAMES:
        raise StageError(f"unknown runtime {name!r}; the registered runtimes are {', '.join(NAMES)}")
    return importlib.import_module(f"{__name__}.{name}")


def open_backend(runtime: str, artifact: Path, threads: int, **options) -> Session:
    """Load ``artifact`` in ``runtime`` with ``threads`` intra-op threads (0: the runtime's default)."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise StageError(f"artifact {artifact} does not exist")
    return get(runtime).open(artifact, threads, **options)


def open_graph(runtime: str, path: Path, threads: int, **options):
    """The ``feeds -> outputs`` callable of the generation graph ``path`` in ``runtime``."""
    module = get(runtime)
    if module.GENERATES != "graphs":
        raise StageError(f"{runtime} does not run the workflow's generation graphs (it generates: {module.GENERATES})")
    if not Path(path).exists():
        raise StageError(f"generation graph {path} does not exist")
    return module.open_graph(Path(path), threads, **options)


def artifact_of(runtime: str, folder: Path) -> Path:
    """What ``runtime`` opens in an artifact folder: the folder itself for a runtime that declares
    ``OPENS_FOLDER`` (its files belong together), else the folder's model file
    (:func:`lmship.records.artifact_in`)."""
    from ..records import artifact_in

    return Path(folder) if getattr(get(runtime), "OPENS_FOLDER", False) else artifact_in(folder)


def generation_kind(runtime: str) -> str | None:
    """``"graphs"``, ``"own"`` or None: how ``runtime`` generates text."""
    return get(runtime).GENERATES


def export_manifest(folder: Path, backend: str) -> dict:
    """The manifest of a folder of transformers.exporters graphs for ``backend`` ("ort" or "openvino"), or a
    StageError saying the folder is not one."""
    import json

    path = Path(folder) / EXPORT_MANIFEST
    if not path.is_file():
        raise StageError(f"{folder} is not a folder of exported generation graphs (no {EXPORT_MANIFEST})")
    data = json.loads(path.read_text())
    if data.get("backend") != backend:
        raise StageError(f"{path} holds {data.get('backend')!r} graphs; this runtime runs the {backend} export")
    return data


def not_installed(runtime: str) -> str | None:
    """Why ``runtime`` cannot run in this Python environment (its package is not installed), or None."""
    import importlib.util

    module = get(runtime)
    if importlib.util.find_spec(module.IMPORTS) is not None:
        return None
    lock = getattr(module, "LOCK", "envs/requirements.lock")
    return (
        f"not applicable: {module.DISTRIBUTION} is not installed in this environment; install {lock} "
        "(the README's commands) or run with --sdm conda"
    )


def not_applicable(runtime: str, config: dict) -> str | None:
    """Why ``runtime`` cannot take a model of Hugging Face ``config`` (None when it can, or cannot tell)."""
    check = getattr(get(runtime), "not_applicable", None)
    return check(config) if check else None


def require_bf16(what: str) -> None:
    """Refuse a bf16 run on a CPU without bf16 instructions (AVX-512 BF16 or AMX), saying so."""
    from ..host import BF16_FLAGS, cpu_flags

    if not set(BF16_FLAGS) & set(cpu_flags()):
        raise StageError(
            f"{what}: bf16 was requested but this CPU has no bf16 instructions ({' or '.join(BF16_FLAGS)} "
            "in /proc/cpuinfo); the bf16 rows do not apply on this machine"
        )


def os_threads() -> int | None:
    """Threads of this process (Linux ``/proc/self/task``); None where /proc is missing."""
    try:
        return sum(1 for _ in Path("/proc/self/task").iterdir())
    except OSError:
        return None


def dist_version(dist: str) -> str:
    """The installed version of the distribution ``dist`` ("unknown" when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"
