"""OpenVINO GenAI (``LLMPipeline``): a peer runtime with its own cache and loop, on a stateful IR.

The artifact is the folder :mod:`lmship.stateful_ir` writes: one stateful OpenVINO IR made by
transformers' own exporter (``openvino_model.xml``, the KV cache as OpenVINO state, ``beam_idx``),
with the tokenizer IRs the pipeline needs. ``generate``: the pipeline's greedy loop (its stateful
SDPA backend: the CPU default, paged attention, rewrites the IR's attention and fails on these
graphs), time to first token and per-token times from its own ``perf_metrics``. ``open``: the
pipeline returns no logits, so the same IR runs as a plain OpenVINO model (:class:`StatefulIR`),
one token per step from an empty state, each step's logits being that position's (all positions
of a window, as every other runtime gives them). Threads: ``INFERENCE_NUM_THREADS``; read back
from the compiled IR, and for the pipeline (which cannot report them) counted as the threads of
this process that were on the CPU for a tenth of the generation's wall time.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import StageError
from . import GenerationResult, Session, export_manifest

NAME = "openvino_genai"
#: The package this runtime imports (checked before any job: a runtime not installed is not applicable).
#: The lock that installs it, apart from envs/requirements.lock.
LOCK = "envs/peers.lock"
IMPORTS = "openvino_genai"
DISTRIBUTION = "openvino-genai"
GENERATES = "own"
#: The runtime opens the artifact folder (the IR, its tokenizers and the export's manifest).
OPENS_FOLDER = True


def version() -> str:
    try:
        import openvino_genai
    except ImportError as exc:
        raise StageError(
            f"openvino-genai is not installed ({exc}); install envs/peers.lock (see docs/environments.md)"
        ) from exc
    return openvino_genai.__version__


def manifest(folder: Path) -> dict:
    """The stateful-IR folder's manifest, or a StageError saying the folder is not one."""
    return export_manifest(folder, "openvino")


class StatefulIR:
    """The stateful IR of an :func:`export_openvino` folder in one infer request (state reset per prompt)."""

    def __init__(self, folder: Path, manifest: dict, threads: int):
        import openvino as ov
        import openvino.properties as props
        import openvino.properties.hint as hints

        self.max_len = int(manifest["max_len"])
        path = folder / manifest["components"]["model"]
        core = ov.Core()
        model = core.read_model(str(path))
        config: dict[str, Any] = {
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            hints.inference_precision: ov.Type.f32,
            hints.kv_cache_precision: ov.Type.f32,
        }
        if threads > 0:
            config[props.inference_num_threads] = threads
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise StageError(f"OpenVINO cannot compile {path} for the CPU: {type(exc).__name__}: {exc}") from exc
        self.request = self.compiled.create_infer_request()
        self.inputs = {p.get_any_name() for p in self.compiled.inputs}
        unknown = self.inputs - {"input_ids", "position_ids", "attention_mask", "beam_idx"}
        if unknown:
            raise StageError(f"{path} takes {sorted(unknown)}, which this loop does not feed")
        self.logits_port = self.compiled.output("logits")
        self.threads_in_effect = int(self.compiled.get_property(props.inference_num_threads))
        self.kv_cache_precision = str(self.compiled.get_property(hints.kv_cache_precision))
        self.version = ov.__version__
        self.position = 0

    def _infer(self, tokens: np.ndarray) -> np.ndarray:
        q, pos = tokens.size, self.position
        feeds = {
            "input_ids": tokens.reshape(1, q).astype(np.int64),
            "position_ids": np.arange(pos, pos + q, dtype=np.int64)[None],
            "beam_idx": np.zeros(1, np.int32),
        }
        if "attention_mask" in self.inputs:
            feeds["attention_mask"] = np.ones((1, pos + q), np.int64)
        self.request.infer(feeds, share_inputs=True)
        self.position = pos + q
        return self.request.get_tensor(self.logits_port).data[0, -1]

    def prompt(self, ids: np.ndarray) -> np.ndarray:
        self.request.reset_state()
        self.position = 0
        return self._infer(np.asarray(ids, np.int64))

    def step(self, token: int) -> np.ndarray:
        if self.position >= self.max_len:
            raise StageError(f"the folder was exported and checked for {self.max_len} positions")
        return self._infer(np.array([token], np.int64))


def open(folder: Path, threads: int) -> Session:
    """Every position's logits of ``input_ids [batch, seq]`` through the folder's IR, one token per step."""
    folder = Path(folder)
    steps = StatefulIR(folder, manifest(folder), threads)

    def run(input_ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(input_ids, dtype=np.int64)
        rows = []
        for row in ids:
            first = np.array(steps.prompt(row[:1]), np.float32)
            rows.append(np.stack([first, *(np.array(steps.step(int(t)), np.float32) for t in row[1:])]))
        return np.stack(rows)

    return Session(NAME, steps.version, threads, run, steps.threads_in_effect, keepalive=steps)


def _task_cpu_ms() -> dict[str, float]:
    """CPU time (user + system, ms) of every thread of this process (Linux ``/proc/self/task``)."""
    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            times[task.name] = (int(fields[11]) + int(fields[12])) * 1000.0 / tick
    return times


def generate(
    folder: Path,
    prompts: list[np.ndarray],
    new_tokens: int,
    max_len: int | None = None,
    *,
    threads: int = 1,
    warmup: bool = True,
) -> GenerationResult:
    """Greedy ``new_tokens`` per prompt with OpenVINO GenAI's ``LLMPipeline`` over a stateful-IR folder.

    Threads go to the CPU plugin as ``INFERENCE_NUM_THREADS``; the pipeline cannot report them, so
    ``threads_in_effect`` counts the threads of this process that were on the CPU for at least a tenth of the
    generation's wall time, and ``cpu_per_wall`` is the CPU time of all of them over that wall time. Time to
    first token and per-token times are the pipeline's own (``perf_metrics``). The pipeline returns no logits:
    its quality is that of the same IR (:func:`open`).
    """
    folder = Path(folder)
    made = manifest(folder)
    if max_len is not None and max_len > int(made["max_len"]):
        raise StageError(f"{folder} was exported and checked for {made['max_len']} positions, not {max_len}")
    try:
        import openvino as ov
        import openvino_genai
    except ImportError as exc:
        raise StageError(
            "OpenVINO GenAI is not importable: install openvino-genai and openvino-tokenizers of the installed "
            "openvino's version (e.g. 2026.4.1.0)"
        ) from exc
    # The stateful pipeline (SDPA): the default on the CPU, paged attention, rewrites the IR's attention and
    # fails on this exporter's graphs.
    config = {
        "ATTENTION_BACKEND": "SDPA",
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
        "KV_CACHE_PRECISION": "f32",
    }
    if threads > 0:
        config["INFERENCE_NUM_THREADS"] = threads
    started = time.perf_counter()
    try:
        pipe = openvino_genai.LLMPipeline(str(folder), "CPU", **config)
    except Exception as exc:
        raise StageError(f"OpenVINO GenAI cannot load {folder}: {type(exc).__name__}: {exc}") from exc
    load_s = time.perf_counter() - started
    gen = pipe.get_generation_config()
    gen.do_sample = False
    gen.max_new_tokens = new_tokens
    gen.min_new_tokens = new_tokens
    gen.ignore_eos = True

    def run(prompt: np.ndarray, count: int):
        ids = np.ascontiguousarray(np.asarray(prompt, dtype=np.int64).reshape(1, -1))
        mask = np.ones_like(ids)
        gen.max_new_tokens = gen.min_new_tokens = count
        inputs = openvino_genai.TokenizedInputs(ov.Tensor(ids), ov.Tensor(mask))
        return pipe.generate(inputs, gen)

    if warmup:
        run(np.asarray(prompts[0]), 2)
    result = GenerationResult(NAME, threads, [], [], [], load_s, [], None)
    before, wall = _task_cpu_ms(), time.perf_counter()
    for prompt in prompts:
        out = run(np.asarray(prompt), new_tokens)
        raw = out.perf_metrics.raw_metrics
        result.tokens.append([int(t) for t in out.tokens[0]])
        result.ttft_ms.append(float(raw.m_times_to_first_token[0]) / 1000.0)
        # the pipeline's gaps between consecutive new tokens (µs): one per decode step (this release keeps
        # no entry for the first token; take the last new_tokens - 1 should a release add one)
        result.decode_ms.append([float(d) / 1000.0 for d in raw.m_durations][-(len(result.tokens[-1]) - 1) :])
        result.prompt_lens.append(int(np.asarray(prompt).size))
    wall_ms = (time.perf_counter() - wall) * 1000.0
    after = _task_cpu_ms()
    used = {t: ms - before.get(t, 0.0) for t, ms in after.items()}
    result.threads_in_effect = sum(1 for ms in used.values() if ms >= 0.1 * wall_ms)
    result.cpu_per_wall = round(sum(used.values()) / wall_ms, 2) if wall_ms > 0 else None
    result.runtime_version = openvino_genai.__version__
    return result
