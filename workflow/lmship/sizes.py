"""How big a model is, read before any job, and what each stage needs for it.

:func:`model_size` reads the parameter count without loading the weights: from the prepared
folder's ``prepare.json`` once it exists, else from the safetensors headers of a local folder (or
of a cached hub snapshot), the tensor table of a GGUF file, or a random model's architecture. A
model fetched by its first stage (a wheel from PyPI) is sized once that stage has run.

:func:`stage_need` predicts a stage's peak memory and wall time for a model of that size: a line
against fp32 GB through the measurements in ``data/stage_costs.json`` (peak RSS and seconds of real
runs at three or more model sizes; a new measurement is a line there), per stage and graph family,
interpolated between the measured sizes (:class:`_Line`). Memory gets headroom over the predicted
peak; a figure measured at one model size only is a floor from that size up (below it: the line of
the stage's other variants, or the rule's own figure), so that a 1B run's figures are never asked
of a tiny model.

:func:`size_limits` says which formats cannot hold a model at all: protobuf files above 2 GB are
written with external data, which ONNX Runtime and OpenVINO read but onnxsim and onnx2tf do not;
a TFLite flatbuffer cannot pass 2 GB; and a stage whose predicted peak exceeds the memory budget
would only be killed after minutes of work.

Standard library only: the Snakefile calls these while it parses.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import struct
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from .gguf_table import gguf_table, gguf_types

#: The largest protobuf (ONNX file, TF SavedModel graph) and FlatBuffer (TFLite) a single file can be.
PROTOBUF_LIMIT = 2**31 - 1
COSTS = Path(__file__).parent / "data" / "stage_costs.json"
#: Declared memory = fitted peak x this, so a model between two measured sizes is not killed.
MEM_HEADROOM = 1.25
#: Declared run time = fitted wall time x this (minutes, at least RUNTIME_FLOOR_MIN).
RUNTIME_HEADROOM = 3.0
RUNTIME_FLOOR_MIN = 10


@dataclass(frozen=True)
class ModelSize:
    """A model's parameter count and the dimensions the costs and limits depend on."""

    params: int
    vocab: int | None = None
    hidden: int | None = None
    where: str = ""  # how it was read

    @property
    def fp32_gb(self) -> float:
        return 4 * self.params / 1e9

    def describe(self) -> str:
        millions = f"{self.params / 1e6:.0f}M" if self.params >= 10e6 else f"{self.params / 1e6:.2f}M"
        return f"{millions} parameters ({self.fp32_gb:.2f} GB in fp32, from {self.where})"


# --------------------------------------------------------------------------- reading sizes


def model_size(spec: dict, prepared: Path) -> ModelSize | None:
    """The size of the model of config entry ``spec`` (prepared folder ``prepared``), or None while unknown."""
    info = Path(prepared) / "prepare.json"
    if info.is_file():
        data = json.loads(info.read_text())
        cfg = _read_json(Path(prepared) / "config.json")
        if data.get("params"):
            return ModelSize(int(data["params"]), _vocab(cfg), _hidden(cfg), "the prepared model")
    source = spec.get("source")
    if source == "random":
        return size_from_config(_random_config(spec.get("architecture") or {}), "its architecture")
    if source == "local":
        return size_from_folder(Path(spec["path"]))
    if source == "gguf" and Path(spec["path"]).is_file():
        return size_from_gguf(Path(spec["path"]))
    if source == "hub":
        snapshot = _hub_snapshot(spec["id"])
        return size_from_folder(snapshot) if snapshot else None
    return None


def size_from_folder(folder: Path) -> ModelSize | None:
    """Exact parameter count from the safetensors headers of an HF folder (no weights are read)."""
    files = sorted(Path(folder).glob("*.safetensors"))
    cfg = _read_json(Path(folder) / "config.json")
    if not files:
        return size_from_config(cfg, "config.json") if cfg else None
    params = 0
    for path in files:
        header = _safetensors_header(path)
        if header is None:  # not a readable safetensors file: preparing the model will say what is wrong with it
            return None
        params += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return ModelSize(params, _vocab(cfg), _hidden(cfg), "the safetensors headers")


def _safetensors_header(path: Path) -> dict | None:
    """The tensor table of a safetensors file, or None when the file is truncated or not safetensors."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > path.stat().st_size:
                return None
            header = json.loads(f.read(length))
        return header if isinstance(header, dict) else None
    except (OSError, struct.error, ValueError, UnicodeDecodeError):
        return None


def size_from_config(cfg: dict, where: str) -> ModelSize | None:
    """Parameter count of a decoder from its config: embedding, layers (attention, MLP, norms), head."""
    hidden, layers = _hidden(cfg), cfg.get("num_hidden_layers") or cfg.get("n_layer")
    vocab = _vocab(cfg)
    if not (hidden and layers and vocab):
        return None
    heads = cfg.get("num_attention_heads") or cfg.get("n_head") or 1
    kv = cfg.get("num_key_value_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    inner = cfg.get("intermediate_size") or cfg.get("n_inner") or 4 * hidden
    attention = hidden * head_dim * (2 * heads + 2 * kv)
    gated = cfg.get("model_type") not in ("gpt2",)
    mlp = (3 if gated else 2) * hidden * inner
    params = vocab * hidden + layers * (attention + mlp + 2 * hidden) + hidden
    if not cfg.get("tie_word_embeddings", True):
        params += vocab * hidden
    if cfg.get("n_positions"):
        params += cfg["n_positions"] * hidden
    return ModelSize(int(params), vocab, hidden, where)


def size_from_gguf(path: Path) -> ModelSize | None:
    """Parameter count from a GGUF file's tensor table (the header only; no weights are read)."""
    table = gguf_table(path)
    if table is None:
        return None
    meta, tensors = table
    params = sum(math.prod(shape) for shape, _ in tensors)
    arch = meta.get("general.architecture", "")
    tokens = meta.get("tokenizer.ggml.tokens")
    vocab = tokens if isinstance(tokens, int) else None
    return ModelSize(params, vocab, meta.get(f"{arch}.embedding_length"), "the GGUF tensor table")


def model_gguf_types(spec: dict, prepared: Path) -> dict[str, int] | None:
    """Tensor counts per ggml type of the GGUF the model of ``spec`` came from; None: no GGUF, or not fetched yet."""
    info = Path(prepared) / "prepare.json"
    if info.is_file():
        return json.loads(info.read_text()).get("gguf_types")
    if spec.get("source") == "gguf" and Path(spec["path"]).is_file():
        return gguf_types(Path(spec["path"]))
    return None


def _random_config(arch: dict) -> dict:
    from .prepare_model import RANDOM_DEFAULTS  # standard library only at import

    return {**RANDOM_DEFAULTS, **arch}


def _hub_snapshot(repo_id: str) -> Path | None:
    import os

    home = os.environ.get("HF_HUB_CACHE") or str(
        Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub"
    )
    snapshots = Path(home) / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    found = sorted(p for p in snapshots.glob("*") if (p / "config.json").exists()) if snapshots.is_dir() else []
    return found[-1] if found else None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _vocab(cfg: dict) -> int | None:
    return cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")


def _hidden(cfg: dict) -> int | None:
    return cfg.get("hidden_size") or cfg.get("n_embd") or (cfg.get("text_config") or {}).get("hidden_size")


# --------------------------------------------------------------------------- what a stage needs


@dataclass(frozen=True)
class Need:
    mem_mb: int  # declared: predicted peak with headroom
    runtime_min: int
    peak_mb: int  # the fitted peak itself


@cache
def _measurements() -> tuple[dict, ...]:
    return tuple(json.loads(COSTS.read_text())["measurements"])


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line (intercept, slope) through ``points``; a flat line through a single point."""
    if len(points) == 1:
        return points[0][1], 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return my, 0.0
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - slope * mx, slope


@dataclass(frozen=True)
class _Line:
    """A cost line through a stage's measurements, and its own figure where only one size of its own
    was measured.

    Between measured sizes the figure is interpolated; below the smallest it follows the first
    segment down (never up); above the largest it rises by the steeper of the last segment and the
    least-squares line through all of them. A single straight line through figures measured years
    of code apart at 30M, 360M and 1.24B asked 3.5 GB of a tiny model's export, which needs a tenth.
    """

    points: tuple[tuple[float, float], ...]  # (fp32 GB, figure), by size; empty: the rule's own figure
    floor: tuple[int, float] | None = None  # (params, figure): never less than this at that size or above

    def at(self, params: int, default: float) -> float:
        x = 4 * params / 1e9
        value = _along(self.points, x) if self.points else default
        if self.floor and params >= self.floor[0]:
            value = max(value, self.floor[1])
        return value


def _along(points: tuple[tuple[float, float], ...], x: float) -> float:
    (x0, y0), (xn, yn) = points[0], points[-1]
    if x <= x0:
        first = (points[1][1] - y0) / (points[1][0] - x0) if len(points) > 1 else 0.0
        return max(0.0, y0 + max(first, 0.0) * (x - x0))
    if x >= xn:
        last = (yn - points[-2][1]) / (xn - points[-2][0]) if len(points) > 1 else 0.0
        return yn + max(last, _fit(list(points))[1], 0.0) * (x - xn)
    for (xa, ya), (xb, yb) in itertools.pairwise(points):
        if xa <= x <= xb:
            return ya + (yb - ya) * (x - xa) / (xb - xa)
    return yn


def _own_single(rows: list[dict], what: str) -> tuple[int, float] | None:
    sizes = {m["params"] for m in rows}
    return (sizes.pop(), max(float(m[what]) for m in rows)) if len(sizes) == 1 else None


@cache
def _line(stage: str, graph: str, variant: str | None, what: str) -> _Line | None:
    """The line of ``what`` against fp32 GB for one stage, graph family and variant.

    A line needs two measured sizes: the variant's own measurements where they span two sizes,
    else the largest figure of any variant at each measured size; a generation graph measured at
    fewer than two sizes takes the forward graph's line. A figure of its own measured at one size
    only is a floor from that size up (a flat line through a 1B model's figure would ask it of every
    tiny model; a line through other stages' figures could fall below what it needed)."""
    rows = [m for m in _measurements() if m["stage"] == stage and m.get("graph", "seq") == graph]
    if len({m["params"] for m in rows}) < 2 and graph != "seq":
        line = _line(stage, "seq", variant, what)
        own = _own_single([m for m in rows if m.get("variant") == variant] or rows, what)
        return replace(line, floor=_higher(line.floor, own)) if line and own else line or _flat(own)
    own = [m for m in rows if m.get("variant") == variant]
    single = _own_single(own, what)
    rows = own if own and single is None else rows
    if not rows:
        return None
    largest: dict[int, float] = {}
    for m in rows:
        largest[m["params"]] = max(largest.get(m["params"], 0.0), float(m[what]))
    if len(largest) == 1:  # the stage measured at one size: that figure from there up, the rule's below
        return _flat(_own_single(rows, what))
    return _Line(tuple(sorted((4 * params / 1e9, value) for params, value in largest.items())), single)


def _higher(a: tuple[int, float] | None, b: tuple[int, float]) -> tuple[int, float]:
    return b if a is None or b[1] >= a[1] else a


def _flat(point: tuple[int, float] | None) -> _Line | None:
    return _Line((), point) if point else None


def stage_need(
    stage: str,
    size: ModelSize | None,
    graph: str = "seq",
    variant: str | None = None,
    *,
    default_mb: int,
    default_min: int,
) -> Need:
    """Predicted peak memory and wall time of ``stage`` (``graph`` family, ``variant`` such as the TFLite
    precision) for a model of ``size``.

    Without a size, or for a stage without measurements, the defaults (the rule's own figures) are used.
    """
    mem, wall = _line(stage, graph, variant, "peak_mb"), _line(stage, graph, variant, "seconds")
    if size is None or mem is None:
        return Need(default_mb, default_min, int(default_mb / MEM_HEADROOM))
    peak = mem.at(size.params, default_mb / MEM_HEADROOM)
    seconds = wall.at(size.params, default_min * 60 / RUNTIME_HEADROOM) if wall else default_min * 60
    return Need(
        mem_mb=math.ceil(peak * MEM_HEADROOM / 100.0) * 100,
        runtime_min=max(RUNTIME_FLOOR_MIN, math.ceil(seconds * RUNTIME_HEADROOM / 60.0)),
        peak_mb=int(peak),
    )


# --------------------------------------------------------------------------- what cannot hold a model

#: Stages that write or read a whole model as one protobuf / flatbuffer file.
SINGLE_FILE_STAGES = {
    "simplify_onnx": "onnxsim, which loads and writes the model as one protobuf",
    "savedmodel": "onnx2tf, which reads the ONNX model as one protobuf and writes the weights into saved_model.pb",
    "tflite": "a TFLite flatbuffer",
}


def size_limits(
    stages: list[tuple[str, str | None]], size: ModelSize | None, budget_mb: int | None, graph: str = "seq"
) -> str | None:
    """Why a format made by ``stages`` cannot hold a model of ``size`` (None when it can, or when unknown).

    ``stages``: (stage, variant) of every stage the format's artifact goes through. A single-file
    stage fails above 2 GB of fp32 weights (what its file would hold); a stage whose predicted
    peak exceeds ``budget_mb`` (the memory this run may use) would be killed.
    """
    if size is None:
        return None
    for stage, _ in stages:
        if stage in SINGLE_FILE_STAGES and 4 * size.params > PROTOBUF_LIMIT:
            return (
                f"not applicable: the model has {size.params / 1e6:.0f}M parameters, {size.fp32_gb:.1f} GB in fp32, "
                f"above the 2 GB limit of {SINGLE_FILE_STAGES[stage]} ({stage})"
            )
    if budget_mb:
        for stage, variant in stages:
            need = stage_need(stage, size, graph, variant, default_mb=0, default_min=0)
            if need.peak_mb > budget_mb:
                return (
                    f"not applicable: {stage} is predicted to peak at {need.peak_mb / 1000:.1f} GB for "
                    f"{size.params / 1e6:.0f}M parameters, above this run's memory budget of {budget_mb / 1000:.1f} GB"
                )
    return None


# --------------------------------------------------------------------------- measurements

_GRAPH_SEQ = re.compile(r"^(seq|prefill|decode)(\d+)(?:_(.+))?$")


def harvest(workdir: Path, models: dict[str, int], machine: str) -> list[dict]:
    """Measurements of every stage a finished run made, for ``data/stage_costs.json``.

    ``models``: model name -> parameter count. Wall time is the job's own (``benchmarks/<rule>/``),
    peak memory the stage's own ``getrusage`` peak where its metrics record one (the benchmark files
    sample the RSS and miss short peaks), else the benchmark's sampled maximum.
    """
    import csv

    found = []
    for tsv in sorted(Path(workdir, "benchmarks").glob("*/*.tsv")):
        stage, stem = tsv.parent.name, tsv.stem
        model = next((m for m in sorted(models, key=len, reverse=True) if stem == m or stem.startswith(m + "_")), None)
        if model is None:
            continue
        rest = stem[len(model) + 1 :]
        match = _GRAPH_SEQ.match(rest)
        graph, variant = (match.group(1), match.group(3)) if match else ("seq", rest or None)
        with open(tsv, newline="") as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        if _stage_failed(Path(workdir), stage, model, rest, variant):
            continue  # a failed or killed stage measured its failure, not what it needs
        peak = _stage_peak(Path(workdir), stage, model, rest, variant)
        found.append(
            {
                "stage": stage,
                "graph": graph,
                **({"variant": variant} if variant else {}),
                "model": model,
                "params": models[model],
                "peak_mb": round(peak if peak is not None else float(row["max_rss"])),
                "seconds": round(float(row["s"]), 1),
                "machine": machine,
            }
        )
    return found


def _stage_failed(workdir: Path, stage: str, model: str, rest: str, variant: str | None) -> bool:
    """Whether the stage's artifact folder holds a failure record (lmship.records) instead of its artifact."""
    metrics = _stage_metrics(workdir, stage, model, rest, variant)
    if metrics is None:
        return False
    if stage == "evaluate":
        return _read_json(metrics).get("status", "ok") != "ok"
    return (metrics.parent / "failed.json").is_file()


def _stage_peak(workdir: Path, stage: str, model: str, rest: str, variant: str | None) -> float | None:
    """The peak RSS a stage's own metrics recorded, where it writes them."""
    path = _stage_metrics(workdir, stage, model, rest, variant)
    if path is None:
        return None
    data = _read_json(path)
    return float(data["peak_rss_mb"]) if data.get("peak_rss_mb") else None


def _stage_metrics(workdir: Path, stage: str, model: str, rest: str, variant: str | None) -> Path | None:
    """Where a stage writes its metrics (in its artifact folder for the conversions), None if it writes none."""
    base = workdir / "results" / model
    match = _GRAPH_SEQ.match(rest)
    folder = base / f"{match.group(1)}{match.group(2)}" if match else base
    names = {
        "export_onnx": "onnx",
        "simplify_onnx": "onnx_simplified",
        "savedmodel": "savedmodel",
        "openvino_ir": "openvino",
        "tflite": f"tflite_{variant}",
        "quantize_onnx": f"onnx_{variant}",
        "compress_openvino": f"openvino_{variant}",
    }
    if stage in names:
        path = folder / names[stage] / "metrics.json"
    elif stage == "quantize_pytorch":
        path = base / "pytorch_int8" / "metrics.json"
    elif stage == "reference_logits":
        path = folder / "metrics" / "reference_logits.json"
    elif stage == "prepare_model":
        path = base / "hf" / "prepare.json"
    elif stage == "evaluate" and variant:
        path = folder / "accuracy" / f"{variant}.json"
    else:
        return None
    return path


def record_costs(workdir: Path, machine: str, costs: Path = COSTS) -> list[dict]:
    """Add what a finished run in ``workdir`` measured to ``costs`` (a stage measured again at the same
    model size replaces its earlier figure); returns the new measurements."""
    models = {}
    for hf in sorted(Path(workdir, "results").glob("*/hf")):
        size = size_from_folder(hf)
        if size is not None:
            models[hf.parent.name] = size.params
    found = harvest(Path(workdir), models, machine)
    data = _read_json(costs) or {"measurements": []}

    def key(m: dict) -> tuple:
        return (m["stage"], m.get("graph", "seq"), m.get("variant"), m["params"])

    new = {key(m) for m in found}
    kept = [m for m in data["measurements"] if key(m) not in new]
    data["measurements"] = sorted(kept + found, key=lambda m: (*map(str, key(m)[:3]), m["params"]))
    costs.write_text(json.dumps(data, indent=1) + "\n")
    return found


def main(argv: list[str] | None = None) -> None:
    import argparse
    import os

    parser = argparse.ArgumentParser(description="Add a finished run's stage costs to data/stage_costs.json.")
    parser.add_argument("--workdir", type=Path, required=True, help="the run's working directory")
    parser.add_argument("--machine", default=f"{os.cpu_count()} cores", help="the machine it ran on")
    parser.add_argument("--costs", type=Path, default=COSTS)
    args = parser.parse_args(argv)
    found = record_costs(args.workdir, args.machine, args.costs)
    print(f"{len(found)} measurements of {len({m['model'] for m in found})} models added to {args.costs}")
