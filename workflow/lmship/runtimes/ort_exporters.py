"""ONNX Runtime on the generation graphs of transformers' own ONNX exporter (``transformers.exporters``).

The artifact is the folder :mod:`lmship.exported_onnx` writes (:func:`lmship.hf_export.export_ort`): a
``prefill.onnx`` of a fixed prompt length and a ``decode.onnx`` of one token over a static cache of
``max_len`` slots that the graph updates itself (ScatterND), fused by the exporter for ONNX Runtime's CPU
kernels, with the manifest ``lmship_export.json``. :class:`OrtSteps` runs them over IOBinding with two
cache buffer sets that swap roles every step, so no cache crosses the host between steps.

``generate``: greedy, the prompt through the prefill graph (a longer prompt's tail through decode steps),
then one decode step per token; time to first token and per-token times measured around the graphs.
``open``: every position's logits of a window, one decode step per token from an empty cache (the
decode graph serves every position; the prefill graph keeps only the last position's logits), as
OpenVINO GenAI's IR is evaluated. Threads: ONNX Runtime's intra-op threads, read back from the session.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np

from .. import StageError
from . import GenerationResult, Session, export_manifest, greedy_over

NAME = "ort_exporters"
#: The package this runtime imports (checked before any job: a runtime not installed is not applicable).
IMPORTS = "onnxruntime"
DISTRIBUTION = "onnxruntime"
GENERATES = "own"
#: The runtime opens the artifact folder (both graphs and the export's manifest).
OPENS_FOLDER = True

_CACHE_INPUT = re.compile(r"^(?:input\.|output\.)?past_key_values\.layers\.(\d+)\.(keys|values|cumulative_length)$")


def version() -> str:
    import onnxruntime as ort

    return ort.__version__


class OrtSteps:
    """The ONNX Runtime prefill and decode graphs of an :func:`export_ort` folder, with the cache between them.

    Two sets of cache buffers take turns: a step reads one set and writes its updated cache into the other,
    both bound once (IOBinding), so no cache crosses the host between steps.
    """

    def __init__(self, folder: Path, manifest: dict, threads: int):
        import onnxruntime as ort

        from .onnxruntime import session

        self.folder = folder
        self.prompt_len, self.max_len = int(manifest["prompt_len"]), int(manifest["max_len"])
        sessions = {name: session(folder / manifest["components"][name], threads) for name in ("prefill", "decode")}
        self.prefill, self.decode = sessions["prefill"], sessions["decode"]
        options = self.decode.get_session_options()
        self.threads_in_effect = int(options.intra_op_num_threads) or None
        self.version = ort.__version__
        self._bind()

    def _bind(self) -> None:
        dtypes = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(bool)": np.bool_}
        self.small: dict[str, np.ndarray] = {}
        self.masks: list[np.ndarray] = []
        self.lengths: list[np.ndarray] = []
        caches: dict[str, list[np.ndarray]] = {}
        for spec in self.decode.get_inputs():
            if spec.type not in dtypes or not all(isinstance(d, int) for d in spec.shape):
                raise StageError(f"decode input {spec.name} is {spec.type} {spec.shape}: expected a static shape")
            array = np.zeros(spec.shape, dtypes[spec.type])
            match = _CACHE_INPUT.match(spec.name)
            if spec.name in ("input_ids", "position_ids"):
                self.small[spec.name] = array
            elif spec.name.startswith("attention_mask"):
                self.masks.append(array)
                self.small[spec.name] = array
            elif match and match.group(2) == "cumulative_length":
                self.lengths.append(array)
                self.small[spec.name] = array
            elif match:
                caches[spec.name] = [array, np.zeros_like(array)]
            else:
                raise StageError(f"the exported decode graph takes {spec.name!r}, which this loop does not feed")
        lengths = {mask.shape[-1] for mask in self.masks} | {pair[0].shape[2] for pair in caches.values()}
        if lengths != {self.max_len}:
            raise StageError(
                f"the decode graph in {self.folder} holds caches or masks of {sorted(lengths)} slots for a folder of "
                f"{self.max_len} (a sliding window shorter than the cache?): this loop fills every slot once"
            )
        self.cache_inputs = caches
        outputs = {o.name: o for o in self.decode.get_outputs()}
        self.logits = np.zeros(outputs["logits"].shape, np.float32)
        scratch = {
            n: np.zeros(o.shape, dtypes[o.type])
            for n, o in outputs.items()
            if _CACHE_INPUT.match(n) and "input." + n.removeprefix("output.") not in caches
        }
        self.bindings = []
        for parity in (0, 1):
            binding = self.decode.io_binding()
            for name, array in self.small.items():
                binding.bind_input(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            for name, pair in caches.items():
                src = pair[parity]
                binding.bind_input(name, "cpu", 0, src.dtype, list(src.shape), src.ctypes.data)
                out_name = "output." + name.removeprefix("input.")
                dst = pair[1 - parity]
                binding.bind_output(out_name, "cpu", 0, dst.dtype, list(dst.shape), dst.ctypes.data)
            for name, array in scratch.items():
                binding.bind_output(name, "cpu", 0, array.dtype, list(array.shape), array.ctypes.data)
            binding.bind_output("logits", "cpu", 0, np.float32, list(self.logits.shape), self.logits.ctypes.data)
            self.bindings.append(binding)
        self.keepalive = scratch
        self.parity, self.position = 0, 0

    def reset(self) -> None:
        """An empty cache: the next :meth:`step` is position 0 (every window of the evaluation starts so)."""
        for pair in self.cache_inputs.values():
            for array in pair:
                array[...] = 0
        for mask in self.masks:
            mask[...] = False
        self.parity, self.position = 0, 0

    def prompt(self, ids: np.ndarray) -> np.ndarray:
        n, p = ids.size, self.prompt_len
        if n < p:
            raise StageError(f"a prompt of {n} tokens is shorter than the prefill graph's {p} tokens")
        feeds: dict[str, np.ndarray] = {}
        for spec in self.prefill.get_inputs():
            name = spec.name
            match = _CACHE_INPUT.match(name)
            if name == "input_ids":
                feeds[name] = ids[None, :p].astype(np.int64)
            elif name == "position_ids":
                feeds[name] = np.arange(p, dtype=np.int64)[None]
            elif name.startswith("attention_mask"):
                feeds[name] = _causal_mask(spec.shape, 0)
            elif match and match.group(2) == "cumulative_length":
                feeds[name] = np.array(0, np.int64)
            else:
                raise StageError(f"the exported prefill graph takes {name!r}, which this loop does not feed")
        names = [o.name for o in self.prefill.get_outputs()]
        out = dict(zip(names, self.prefill.run(None, feeds), strict=True))
        self.parity = 0
        for name, pair in self.cache_inputs.items():
            base = name.removeprefix("input.")
            np.copyto(pair[0], out.get(base, out.get("output." + base)))
        for mask in self.masks:
            mask[...] = False
            mask[..., :p] = True
        self.position = p
        logits = out["logits"][0, -1]
        for token in ids[p:]:
            logits = self.step(int(token))
        return logits

    def step(self, token: int) -> np.ndarray:
        pos = self.position
        if pos >= self.max_len:
            raise StageError(f"the cache of {self.max_len} slots is full")
        self.small["input_ids"][...] = token
        self.small["position_ids"][...] = pos
        for length in self.lengths:
            length[...] = pos
        for mask in self.masks:
            mask[..., pos] = True
        self.decode.run_with_iobinding(self.bindings[self.parity])
        self.parity = 1 - self.parity
        self.position = pos + 1
        return self.logits[0, -1]


def _causal_mask(shape, start: int) -> np.ndarray:
    """Rows for the query positions ``start..`` over the cache slots: True where the slot is at or before the row."""
    queries, slots = shape[-2], shape[-1]
    rows = start + np.arange(queries)[:, None]
    return (np.arange(slots)[None, :] <= rows).reshape(shape)


def open(folder: Path, threads: int) -> Session:
    """Every position's logits of ``input_ids [batch, seq]``: one decode step per token from an empty cache."""
    folder = Path(folder)
    steps = OrtSteps(folder, export_manifest(folder, "ort"), threads)

    def run(input_ids: np.ndarray) -> np.ndarray:
        rows = []
        for row in np.asarray(input_ids, dtype=np.int64):
            if row.size > steps.max_len:
                raise StageError(f"a window of {row.size} tokens exceeds the {steps.max_len} slots of {folder}")
            steps.reset()
            rows.append(np.stack([np.array(steps.step(int(t)), np.float32) for t in row]))
        return np.stack(rows)

    return Session(NAME, steps.version, threads, run, steps.threads_in_effect, keepalive=steps)


def generate(
    folder: Path,
    prompts: list[np.ndarray],
    new_tokens: int,
    max_len: int | None = None,
    *,
    threads: int = 1,
    warmup: bool = True,
) -> GenerationResult:
    """Greedy ``new_tokens`` per prompt through the folder's prefill and decode graphs at ``threads``."""
    folder = Path(folder)
    made = export_manifest(folder, "ort")
    if max_len is not None and max_len > int(made["max_len"]):
        raise StageError(f"{folder} was exported and checked for {made['max_len']} positions, not {max_len}")
    started = time.perf_counter()
    steps = OrtSteps(folder, made, threads)
    load_s = time.perf_counter() - started

    def one(prompt: np.ndarray, count: int) -> tuple[list[int], float, list[float]]:
        if prompt.size + count - 1 > steps.max_len:
            raise StageError(f"a prompt of {prompt.size} tokens + {count} new tokens exceeds {steps.max_len} slots")
        t0 = time.perf_counter()
        token = int(np.argmax(steps.prompt(prompt.astype(np.int64))))
        ttft = (time.perf_counter() - t0) * 1000.0
        tokens, times = [token], []
        for _ in range(1, count):
            t0 = time.perf_counter()
            token = int(np.argmax(steps.step(token)))
            times.append((time.perf_counter() - t0) * 1000.0)
            tokens.append(token)
        return tokens, ttft, times

    return greedy_over(
        NAME,
        prompts,
        new_tokens,
        one,
        threads=threads,
        threads_in_effect=steps.threads_in_effect,
        load_s=load_s,
        warmup=warmup,
    )
