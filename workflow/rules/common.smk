# Helper functions, config validation, wildcard constraints and target lists.
# No rules here. Parse-time work is validation only.

import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

# The one place that makes the lmship package (workflow/lmship) importable: for this
# file, and through PYTHONPATH for every job's script (cluster jobs parse this file again).
# PYTHONPATH is set here, not required from the user, so it is no `envvars:` entry.
_PACKAGE_PARENT = str(Path(workflow.basedir) / "workflow")
sys.path.insert(0, _PACKAGE_PARENT)
os.environ.update(
    PYTHONPATH=os.pathsep.join(
        p for p in (_PACKAGE_PARENT, os.getenv("PYTHONPATH")) if p
    )
)

from lmship import StageError  # noqa: E402
from lmship.backends import BACKENDS, REFERENCE, not_applicable  # noqa: E402
from lmship.checks import check_hub_reachable, check_local_folder, model_config  # noqa: E402
from lmship.configcheck import check_config  # noqa: E402
from lmship.decode_graph import GRAPH_FAMILIES, generates  # noqa: E402
from lmship.families import generation_refusal  # noqa: E402
from lmship.host import cpu_flags, total_memory_mb  # noqa: E402
from lmship.openvino import COMPRESSIONS, needs_calibration  # noqa: E402
from lmship.quantize_onnx import VARIANTS  # noqa: E402
from lmship.runlock import record_owner, remove_stale_lock  # noqa: E402
from lmship.tflite import PRECISIONS  # noqa: E402

SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"

# Reject a bad config before any job runs, naming key, value and what is allowed;
# then let Snakemake's own validation fill in the schema's defaults.
try:
    check_config(config, SCHEMA)
except StageError as exc:
    raise WorkflowError(str(exc)) from None
validate(config, SCHEMA)

MODELS = list(config["models"])
SEQ_LENS = [int(s) for s in config["seq_lens"]]
THREADS = [int(t) for t in config["benchmark"]["threads"]]
GEN = config[
    "generation"
]  # prompt_tokens, max_len, new_tokens, prompts, rounds, tflite_prefill
BACKEND_NAMES = list(dict.fromkeys([REFERENCE, *config["backends"]]))

# Machine-wide resource the scheduler enforces: every job takes 1 bench_lock (set on
# every rule by finish_rules(), so no rule can forget it), a timing job takes all of
# it, so a timing job never runs next to any other job (whatever --cores says).
BENCH_LOCK = 1000
if "bench_lock" not in workflow.global_resources:
    workflow.register_resource("bench_lock", BENCH_LOCK)

# Locally, cap the sum of the running jobs' mem_mb at 92% of RAM unless the user
# set --resources mem_mb=...; on a cluster each job gets its own memory instead.
_LOCAL = (
    workflow.global_resources.get("_nodes") is None
    or workflow.global_resources["_nodes"].value is None
)
if _LOCAL and "mem_mb" not in workflow.global_resources and total_memory_mb():
    workflow.register_resource("mem_mb", int(total_memory_mb() * 0.92))

# A run killed while holding the directory lock (SIGKILL, OOM, power cut) must not
# block the next one: drop its lock if its process is gone (a live run keeps it).
# (Snakemake takes the lock before any onstart handler, so this cannot wait.)
if workflow.is_main_process:
    _stale = remove_stale_lock()
    if _stale:
        logger.warning(_stale)


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    seq=r"\d+",
    graph="|".join(GRAPH_FAMILIES),
    threads=r"\d+",
    backend="|".join(map(re.escape, BACKENDS)),
    precision="|".join(PRECISIONS),
    variant="|".join(VARIANTS),
    compression="|".join(COMPRESSIONS),


# --------------------------------------------------------------- after the rules


def finish_rules():
    """Checks that need every rule: bench_lock on each, the memory budget, the model sources."""
    for r in workflow.rules:
        r.resources.setdefault("bench_lock", 1)
    if workflow.is_main_process:  # not again in every (cluster) job
        _warn_memory_budget()
        _check_sources()


def _declared_mb(rule):
    """A rule's mem_mb when it is a plain number (None for one computed per job)."""
    try:
        return getattr(rule.resources.get("mem_mb"), "value", None)
    except ValueError:  # a callable resource has no value outside a job
        return None


def _warn_memory_budget():
    budget = workflow.global_resources.get("mem_mb")
    budget = getattr(budget, "value", budget)
    if not _LOCAL or not isinstance(budget, int):
        return
    declared = {r.name: _declared_mb(r) for r in workflow.rules}
    short = {
        name: mb for name, mb in declared.items() if isinstance(mb, int) and mb > budget
    }
    if short:
        logger.warning(
            f"Memory budget mem_mb={budget} is below what these stages needed on SmolLM2-135M: "
            + ", ".join(f"{r} {mb} MB" for r, mb in short.items())
            + ". They will run one at a time with the whole budget; a model of that size may be "
            "killed for memory (the stage then fails and leaves no output). Smaller models fit."
        )


def _check_sources():
    """Check the model sources that can be checked without running anything."""
    problems = []
    for name, spec in config["models"].items():
        prepared = Path(expand(rules.prepare_model.output.model, model=name)[0])
        try:
            if spec["source"] == "local":
                check_local_folder(Path(spec["path"]))
            elif spec["source"] == "gguf" and not Path(spec["path"]).is_file():
                raise StageError(
                    f"GGUF file {spec['path']!r} does not exist (resolved: {Path(spec['path']).resolve()})"
                )
            elif spec["source"] == "hub" and not (prepared / "config.json").exists():
                check_hub_reachable(spec["id"])
        except StageError as exc:
            problems.append(f"model {name!r}: {exc}")
    if problems:
        raise WorkflowError("\n".join(problems))


# --------------------------------------------------------------------------- paths


def model_spec(wildcards):
    return config["models"][wildcards.model]


def artifact(backend, model, seq, graph="seq", output=None):
    """The file or folder ``backend`` runs: its rule's output (see lmship.backends).

    ``graph``: ``seq`` (the forward pass of ``seq`` tokens), ``prefill`` or ``decode``.
    ``output``: another named output of that rule instead (None if the rule has none of that name).
    """
    b = BACKENDS[backend]
    pattern = getattr(getattr(rules, b.rule).output, output or b.output, None)
    if pattern is None:
        return None
    return expand(pattern, model=model, seq=seq, graph=graph, **b.wildcards)[0]


def calibration_inputs(wildcards):
    """What a data-aware NNCF compression calibrates on (nothing for the data-free ones)."""
    if not needs_calibration(wildcards.compression) or wildcards.graph != "seq":
        return {}
    return {
        "model": expand(rules.prepare_model.output.model, **wildcards)[0],
        "text": rules.eval_text.output.text,
        "inputs": expand(rules.eval_inputs.output.inputs, **wildcards)[0],
    }


def backend_artifact(wildcards):
    return artifact(wildcards.backend, wildcards.model, wildcards.seq)


def backend_stage(wildcards):
    """The metrics JSON of the stage that made the backend's artifact, if it writes one: its gate's
    figures on the evaluation set spare the evaluate stage measuring them again."""
    stage = artifact(
        wildcards.backend, wildcards.model, wildcards.seq, output="metrics"
    )
    return {} if stage is None else {"stage": stage}


def backend_info(wildcards):
    b = BACKENDS[wildcards.backend]
    return {"runtime": b.runtime, "precision": b.precision}


# The CPU the workflow starts on decides whether the bf16 backends apply (a cluster's
# nodes are taken to be of its kind; a bf16 job on a node without bf16 fails and says so).
CPU_FLAGS = cpu_flags()


def backends_of(model):
    """The configured backends that apply to ``model`` on this CPU (the reference first)."""
    source = config["models"][model]["source"]
    return [b for b in BACKEND_NAMES if not_applicable(b, source, CPU_FLAGS) is None]


def skipped_backends():
    """{model: {backend: why}} for configured backends that do not apply to a model."""
    return {
        m: {
            b: not_applicable(b, config["models"][m]["source"], CPU_FLAGS)
            for b in BACKEND_NAMES
            if b not in backends_of(m)
        }
        for m in MODELS
    }


def timed_backends(model, seq):
    """What the timing job of ``model`` runs: name, runtime, precision and artifact of each backend."""
    return [
        {
            "backend": b,
            "runtime": BACKENDS[b].runtime,
            "precision": BACKENDS[b].precision,
            "artifact": artifact(b, model, seq),
        }
        for b in backends_of(model)
    ]


def timing_csvs():
    return expand(rules.timing.output.csv, model=MODELS, seq=SEQ_LENS, threads=THREADS)


def accuracy_jsons(wildcards=None):
    """Accuracy JSONs of every compared backend, of one model and sequence length with ``wildcards``."""
    models = [wildcards.model] if wildcards else MODELS
    seqs = [wildcards.seq] if wildcards else SEQ_LENS
    return [
        expand(rules.evaluate.output.json, model=m, seq=s, backend=b)[0]
        for m in models
        for s in seqs
        for b in backends_of(m)
        if b != REFERENCE
    ]


def reference_metrics():
    """The reference_logits metrics of every model and sequence length, in the order of model_seqs()."""
    return [
        expand(rules.reference_logits.output.metrics, model=m, seq=s)[0]
        for m, s in model_seqs()
    ]


def model_seqs():
    return [(m, s) for m in MODELS for s in SEQ_LENS]


def machine_jsons():
    return expand(rules.machine_limit.output.json, threads=THREADS)


def conversion_targets():
    """The SavedModel and every full-precision artifact (fp32, fp16) of the catalogue."""
    artifacts = [
        b
        for b in BACKENDS.values()
        if b.precision in ("fp32", "fp16") and b.name != REFERENCE
    ]
    return [
        *expand(
            rules.savedmodel.output.savedmodel, model=MODELS, seq=SEQ_LENS, graph="seq"
        ),
        *(artifact(b.name, m, s) for b in artifacts for m, s in model_seqs()),
    ]


def all_targets():
    return [
        *conversion_targets(),
        *expand(rules.accuracy_table.output.csv, model=MODELS, seq=SEQ_LENS),
        *rules.summary.output,
        *rules.plot.output,
        *rules.quality_plot.output,
        *generation_targets(),
    ]


# ------------------------------------------------------------------ generation


def graph_check(wildcards):
    """What a conversion of ``{graph}`` is checked with.

    Forward graph (``seq``): the evaluation set and PyTorch's logits. Generation
    graphs: prompts from the evaluation prose, the host tables and the model.
    """
    if wildcards.graph == "seq":
        return {
            "inputs": expand(rules.eval_inputs.output.inputs, **wildcards)[0],
            "reference": expand(rules.reference_logits.output.logits, **wildcards)[0],
        }
    return {
        "inputs": prompt_inputs(wildcards.model),
        "host": host_npz(wildcards.model),
        "hf": expand(rules.prepare_model.output.model, model=wildcards.model)[0],
    }


def prompt_inputs(model):
    """The evaluation windows of generation.prompt_tokens tokens: the prompts are their prose."""
    return expand(
        rules.eval_inputs.output.inputs, model=model, seq=GEN["prompt_tokens"]
    )[0]


def host_npz(model):
    return expand(rules.host_tables.output.npz, model=model, seq=GEN["max_len"])[0]


_REFUSED = {}


def generation_refused(model):
    """Why ``model`` gets no generation graphs (its family or config; None: it gets them), logged once."""
    if model not in _REFUSED:
        spec = config["models"][model]
        prepared = expand(rules.prepare_model.output.model, model=model)[0]
        known = model_config(spec, Path(prepared))
        why = known and generation_refusal(known, max_len=GEN["max_len"])
        _REFUSED[model] = why or None
        if why and workflow.is_main_process:
            logger.warning(f"model {model!r}: {why}")
    return _REFUSED[model]


def generating_models():
    return [m for m in MODELS if not generation_refused(m)]


def generation_backends(model):
    """The configured backends that generate text: runtime, precision and graphs of each.

    PyTorch (the reference) runs the HF folder with its own KV cache; ONNX Runtime,
    TFLite and OpenVINO run the prefill and decode graphs; with generation.tflite_prefill
    false a TFLite backend runs the prompt through decode steps (no prefill graph).
    Data-aware NNCF compressions calibrate on forward windows: they stay forward-only.
    A model whose family the generation graphs do not express has none (generation_refused).
    """
    out = []
    for b in backends_of(model) if not generation_refused(model) else []:
        spec = BACKENDS[b]
        if not generates(b):
            continue
        decode = artifact(b, model, GEN["max_len"], "decode")
        prefill = artifact(b, model, GEN["prompt_tokens"], "prefill")
        if spec.runtime == "pytorch":
            decode = prefill = artifact(b, model, GEN["max_len"])
        elif spec.runtime == "tflite" and not GEN["tflite_prefill"]:
            prefill = None
        out.append(
            {
                "backend": b,
                "runtime": spec.runtime,
                "precision": spec.precision,
                "decode": decode,
                "prefill": prefill,
            }
        )
    return out


def generation_artifacts(model):
    return sorted(
        {
            g[k]
            for g in generation_backends(model)
            for k in ("decode", "prefill")
            if g[k]
        }
    )


def generation_tiers(model):
    """The accuracy JSONs (quality tier) of the generating backends, at the first sequence length."""
    return [
        expand(
            rules.evaluate.output.json,
            model=model,
            seq=SEQ_LENS[0],
            backend=g["backend"],
        )[0]
        for g in generation_backends(model)
        if g["backend"] != REFERENCE
    ]


def generation_csvs():
    return expand(
        rules.generation.output.csv, model=generating_models(), threads=THREADS
    )


def bandwidth_jsons():
    return expand(rules.bandwidth.output.json, threads=THREADS)


def generation_targets():
    if not GEN["enabled"] or not generating_models():
        return []
    return [*rules.generation_summary.output, *rules.generation_plot.output]
