# Helper functions, config validation, wildcard constraints and target lists.
# No rules here. Parse-time work is validation only.

import os
import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.settings.types import DeploymentMethod
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
from lmship.checks import (
    check_hub_reachable,
    check_local_folder,
    model_config,
)  # noqa: E402
from lmship.configcheck import check_config  # noqa: E402
from lmship.decode_graph import GRAPH_FAMILIES  # noqa: E402
from lmship.families import REGISTRY, generation_refusal  # noqa: E402
from lmship.gguf import QUANTS  # noqa: E402
from lmship.genai_model import VARIANTS as GENAI_VARIANTS  # noqa: E402
from lmship.host import cpu_flags, total_memory_mb  # noqa: E402
from lmship.compress_openvino import COMPRESSIONS, needs_calibration  # noqa: E402
from lmship.quantize_onnx import VARIANTS  # noqa: E402
from lmship.records import failure_lines, failures, forget  # noqa: E402
from lmship.sizes import (
    model_gguf_types,
    model_size,
    size_limits,
    stage_need,
)  # noqa: E402
from lmship.runlock import record_owner, remove_stale_lock  # noqa: E402
from lmship.runtimes import generation_kind  # noqa: E402
from lmship.runtimes import not_applicable as runtime_refusal  # noqa: E402
from lmship.runtimes import not_installed  # noqa: E402
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
    quant="|".join(QUANTS),
    genai="|".join(GENAI_VARIANTS),


# --------------------------------------------------------------- after the rules


def finish_rules():
    """Checks that need every rule: bench_lock on each, the memory budget, the model sources."""
    for r in workflow.rules:
        r.resources.setdefault("bench_lock", 1)
    if workflow.is_main_process:  # not again in every (cluster) job
        _check_sources()
        _announce_sizes()
        _announce_missing_runtimes()


def _announce_missing_runtimes():
    """Before any job: the configured formats whose runtime is not installed here, and how to install it."""
    if _CONDA:
        return
    missing = {}
    for b in BACKEND_NAMES:
        why = not_installed(BACKENDS[b].runtime)
        if why is not None:
            missing.setdefault(why, []).append(b)
    for why, backends in missing.items():
        logger.warning(f"{', '.join(backends)}: {why}")


# Stages every format of a model needs: if one of them cannot fit, the model cannot run at all.
_REFERENCE_STAGES = ("prepare_model", "eval_inputs", "reference_logits")


def _announce_sizes():
    """Before any job: each model's size, the formats its size or its GGUF's weight types rule out
    (and why), and a model that cannot even be prepared and measured within the memory budget is
    refused."""
    budget = memory_budget()
    problems = []
    for m in MODELS:
        size = size_of(m)
        if size is None:
            logger.info(
                f"{m}: its size is read once prepare_model has fetched it; the resources of "
                "its stages are set then"
            )
            continue
        logger.info(f"{m}: {size.describe()}")
        ruled_out = {
            b: why
            for b, why in skipped_backends()[m].items()
            if "2 GB limit" in why or "memory budget" in why
            # types known: the model is a GGUF's, so the reason is the file's weight types
            or (BACKENDS[b].gguf_type and gguf_types_of(m) is not None)
        }
        for backend, why in ruled_out.items():
            logger.warning(f"{m}: {backend} {why}")
        short = size_limits([(s, None) for s in _REFERENCE_STAGES], size, budget)
        if short:
            problems.append(
                f"model {m!r} cannot be measured here: the reference stages {short.partition(': ')[2]}; "
                "run it on a larger machine or raise --resources mem_mb"
            )
    if problems:
        raise WorkflowError("\n".join(problems))


def _check_sources():
    """Check the model sources that can be checked without running anything."""
    problems = []
    for name, spec in config["models"].items():
        prepared = prepared_dir(name)
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


def report_failures():
    """Name the stages that failed in this run (the run's last lines) and drop their records."""
    found = failures(Path("results"), MODELS)
    for line in failure_lines(found):
        logger.warning(line)
    forget(found)


# --------------------------------------------------------------------------- paths


def model_spec(wildcards):
    return config["models"][wildcards.model]


def artifact(backend, model, seq, graph="seq"):
    """The folder ``backend`` runs: its rule's output (see lmship.backends and lmship.records).

    ``graph``: ``seq`` (the forward pass of ``seq`` tokens), ``prefill`` or ``decode``.
    """
    b = BACKENDS[backend]
    pattern = getattr(getattr(rules, b.rule).output, b.output)
    return expand(pattern, model=model, seq=seq, graph=graph, **b.wildcards)[0]


def quantize_source(wildcards):
    """What quantize_onnx reads: the simplified ONNX, or the exported one where onnxsim cannot hold
    the model (above 2 GB: ONNX Runtime's quantisers read external data, onnxsim does not).
    """
    onnxsim = size_limits(
        [("simplify_onnx", None)],
        size_of(wildcards.model),
        memory_budget(),
        wildcards.graph,
    )
    source = rules.export_onnx if onnxsim else rules.simplify_onnx
    return expand(source.output.artifact, **wildcards)[0]


def prepared(wildcards):
    """The prepared Hugging Face folder of the job's model."""
    return expand(rules.prepare_model.output.model, model=wildcards.model)[0]


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


def backend_info(wildcards):
    b = BACKENDS[wildcards.backend]
    return {"runtime": b.runtime, "precision": b.precision, "options": b.options}


# The CPU the workflow starts on decides whether the bf16 backends apply (a cluster's
# nodes are taken to be of its kind; a bf16 job on a node without bf16 fails and says so).
CPU_FLAGS = cpu_flags()


def backends_of(model, graph="seq"):
    """The configured backends that apply to ``model`` on this CPU, at its size (the reference first)."""
    return [b for b in BACKEND_NAMES if why_not(b, model, graph) is None]


_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method


def why_not(backend, model, graph="seq"):
    """Why ``backend`` does not apply to ``model`` (its source, this CPU, its family for its runtime,
    its size), or None."""
    reason = not_applicable(
        backend, config["models"][model]["source"], CPU_FLAGS, gguf_types_of(model)
    )
    if (
        reason is None and not _CONDA
    ):  # --sdm conda: each rule's own env brings its runtime
        reason = not_installed(BACKENDS[backend].runtime)
    known = known_config(model)
    if reason is None and known is not None:
        reason = runtime_refusal(BACKENDS[backend].runtime, known)
    if reason is None and backend != REFERENCE:
        reason = size_limits(
            stages_of(backend, model), size_of(model), memory_budget(), graph
        )
    return reason


_CONFIGS = {}


def known_config(model):
    """The model's config.json as far as it is known before any job, with its architecture named
    (a random model's from its family); None while unknown."""
    if model not in _CONFIGS:
        known = model_config(config["models"][model], prepared_dir(model))
        if known is not None and not known.get("architectures"):
            family = REGISTRY.get(known.get("model_type"))
            if family is not None:
                known = {**known, "architectures": list(family.architectures[:1])}
        _CONFIGS[model] = known
    return _CONFIGS[model]


def skipped_backends():
    """{model: {backend: why}} for configured backends that do not apply to a model."""
    return {
        m: {b: why_not(b, m) for b in BACKEND_NAMES if why_not(b, m) is not None}
        for m in MODELS
    }


# ------------------------------------------------------------------ sizes and needs


def prepared_dir(model):
    """The folder prepare_model writes for ``model`` (it may not exist yet)."""
    return Path(expand(rules.prepare_model.output.model, model=model)[0])


# Each model's size, read before any job (None for a model its first stage fetches: it is
# read again from the prepared folder once that stage has run).
_SIZES = {}


def size_of(model):
    """The model's size (lmship.sizes.ModelSize), or None while unknown."""
    if _SIZES.get(model) is None:
        _SIZES[model] = model_size(config["models"][model], prepared_dir(model))
    return _SIZES[model]


_GGUF_TYPES = {}


def gguf_types_of(model):
    """Tensor counts per ggml type of the GGUF the model comes from, or None (no GGUF, or not fetched yet)."""
    if _GGUF_TYPES.get(model) is None:
        _GGUF_TYPES[model] = model_gguf_types(
            config["models"][model], prepared_dir(model)
        )
    return _GGUF_TYPES[model]


def memory_budget():
    """The memory this run may use (MB): --resources mem_mb, else 92 % of RAM; None on a cluster."""
    budget = workflow.global_resources.get("mem_mb")
    budget = getattr(budget, "value", budget)
    return budget if _LOCAL and isinstance(budget, int) else None


def _strip(pattern):
    return re.sub(r"\{(\w+),[^}]*\}", r"{\1}", str(pattern))


def stages_of(backend, model):
    """(rule, variant) of every stage the artifact of ``backend`` goes through for ``model``, its own
    rule first.

    Read from the rules: a rule's plain input that is another rule's ``artifact`` output is the stage
    before it; quantize_onnx reads the simplified or the exported ONNX (quantize_source).
    """
    made_by = {
        _strip(getattr(rules, r.name).output.artifact): r.name
        for r in workflow.rules
        if "artifact" in getattr(rules, r.name).output.keys()
    }
    b = BACKENDS[backend]
    variant = next(iter(b.wildcards.values()), None)
    chain, rule_name = [], b.rule
    while rule_name in made_by.values():
        chain.append((rule_name, variant))
        variant = None
        if rule_name == "quantize_onnx":
            onnxsim = [("simplify_onnx", None)]
            too_big = size_limits(onnxsim, size_of(model), memory_budget())
            rule_name = "export_onnx" if too_big else "simplify_onnx"
            continue
        inputs = getattr(rules, rule_name).input
        upstream = [
            made_by[_strip(i)]
            for i in inputs
            if isinstance(i, str) and _strip(i) in made_by
        ]
        rule_name = upstream[0] if upstream else None
    return chain


def _need(stage, wildcards, input):
    """What a job of ``stage`` needs for its model (lmship.sizes.stage_need, from the measured stage
    costs); to be determined (Snakemake's <TBD>) until a fetched model's folder exists.
    """
    size = size_of(wildcards.model)
    folder = input.get("hf") or input.get("model")
    if size is None and folder is not None:
        raise FileNotFoundError(2, "the model is not prepared yet", str(folder))
    keys = wildcards.keys()
    variant = next(
        (
            wildcards[k]
            for k in ("precision", "variant", "compression", "backend")
            if k in keys
        ),
        None,
    )
    graph = wildcards["graph"] if "graph" in keys else "seq"
    default_mb, default_min = RULE_DEFAULTS[stage]
    return stage_need(
        stage, size, graph, variant, default_mb=default_mb, default_min=default_min
    )


def need_mb(stage):
    """A rule's ``mem_mb``: the predicted peak of ``stage`` for the job's model, with headroom."""
    return lambda wildcards, input: _need(stage, wildcards, input).mem_mb


def need_min(stage):
    """A rule's ``runtime`` (minutes): the predicted wall time of ``stage``, with headroom."""
    return lambda wildcards, input: _need(stage, wildcards, input).runtime_min


# What each stage needs when its model's size is unknown or the stage was never measured:
# the peak RSS (+ headroom) and minutes measured on SmolLM2-135M.
RULE_DEFAULTS = {
    "prepare_model": (6000, 20),
    "eval_inputs": (1000, 5),
    "reference_logits": (3000, 15),
    "quantize_pytorch": (3000, 10),
    "export_onnx": (6000, 20),
    "exported_onnx": (6000, 20),
    "simplify_onnx": (8000, 20),
    "quantize_onnx": (4000, 20),
    "host_tables": (2000, 5),
    "savedmodel": (8000, 40),
    "tflite": (10000, 20),
    "openvino_ir": (4000, 15),
    "compress_openvino": (3000, 20),
    "evaluate": (5000, 15),
    "timing": (3000, 60),
    "generation": (3000, 90),
    "gguf": (4000, 20),
    "genai_model": (6000, 20),
    "stateful_ir": (6000, 20),
    "stateful_ir_q4_exact": (6000, 20),
}


def timed_backends(model, seq):
    """What the timing job of ``model`` runs: name, runtime, precision, options and artifact of each backend."""
    return [
        {
            "backend": b,
            "runtime": BACKENDS[b].runtime,
            "precision": BACKENDS[b].precision,
            "options": BACKENDS[b].options,
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
    """The SavedModel and every full-precision artifact (fp32, fp16) of the catalogue that applies."""
    artifacts = [
        b.name
        for b in BACKENDS.values()
        if b.precision in ("fp32", "fp16")
        and b.name != REFERENCE
        and b.name in BACKEND_NAMES
    ]
    budget = memory_budget()
    return [
        *(
            expand(rules.savedmodel.output.artifact, model=m, seq=s, graph="seq")[0]
            for m, s in model_seqs()
            if size_limits(
                [("simplify_onnx", None), ("savedmodel", None)], size_of(m), budget
            )
            is None
        ),
        *(
            artifact(b, m, s)
            for b in artifacts
            for m, s in model_seqs()
            if why_not(b, m) is None
        ),
    ]


def published_generation():
    """The generation table and figure that ``publish`` copies (none when generation is off)."""
    if not generation_targets():
        return []
    return [rules.generation_summary.output.md, rules.generation_plot.output.png]


def published_folder():
    """Where ``publish`` copies the run's answer: ``docs/results/<model>`` (models joined by ``+``),
    so the front page can show each model's run beside the others'."""
    return "docs/results/" + "+".join(MODELS)


def run_facts():
    """What the published figures measured, in words (the configuration's size of the run)."""
    b, e = config["benchmark"], config["eval"]
    facts = {
        "models": ", ".join(f"{m} ({config['models'][m]['source']})" for m in MODELS),
        "formats": f"{len(BACKEND_NAMES)} configured",
        "sequence lengths": ", ".join(map(str, SEQ_LENS)),
        "threads": ", ".join(map(str, b["threads"])),
        "timing": f"{b['rounds']} interleaved rounds, at least {b['repeats']} timed passes each",
        "evaluation": f"{e['text_samples']} prose windows + {e['random_samples']} random",
    }
    if GEN["enabled"]:
        facts["generation"] = (
            f"{GEN['prompts']} prompts of {GEN['prompt_tokens']} tokens, "
            f"{GEN['new_tokens']} greedy tokens"
        )
    return facts


def all_targets():
    return [
        *conversion_targets(),
        *expand(rules.accuracy_table.output.csv, model=MODELS, seq=SEQ_LENS),
        *rules.summary.output,
        *rules.plot.output,
        *rules.quality_plot.output,
        *rules.ship_plot.output,
        *generation_targets(),
    ]


# ------------------------------------------------------------------ generation


def graph_check(wildcards):
    """What a conversion of ``{graph}`` is checked with.

    Forward graph (``seq``): the evaluation set and PyTorch's logits. Generation
    graphs: prompts from the evaluation prose, the host tables and the model.
    """
    hf = expand(rules.prepare_model.output.model, model=wildcards.model)[0]
    if wildcards.graph == "seq":
        return {
            "inputs": expand(rules.eval_inputs.output.inputs, **wildcards)[0],
            "reference": expand(rules.reference_logits.output.logits, **wildcards)[0],
            "hf": hf,
        }
    return {
        "inputs": prompt_inputs(wildcards.model),
        "host": host_npz(wildcards.model),
        "hf": hf,
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
        known = known_config(model)
        why = known and generation_refusal(known, max_len=GEN["max_len"])
        _REFUSED[model] = why or None
        if why and workflow.is_main_process:
            logger.warning(f"model {model!r}: {why}")
    return _REFUSED[model]


def generating_models():
    """The models with a generation benchmark (the reference generates for every model)."""
    return MODELS


def graph_models():
    """The generating models that get the workflow's generation graphs (and so host tables)."""
    return [m for m in generating_models() if not generation_refused(m)]


def generation_backends(model):
    """The configured backends that generate text: runtime, precision, options and artifacts of each.

    A runtime with its own cache and loop (PyTorch, the reference, and the peers) generates from
    its forward artifact folder; ONNX Runtime, LiteRT and OpenVINO run the prefill and decode
    graphs (with generation.tflite_prefill false a LiteRT backend runs the prompt through decode
    steps, no prefill graph). A backend may be forward-only (``generates`` False in the catalogue),
    and a model whose family the generation graphs do not express gets no graph-run ones
    (generation_refused).
    """
    out = []
    for b in backends_of(model):
        spec = BACKENDS[b]
        kind = generation_kind(spec.runtime)
        if not spec.generates or kind is None:
            continue
        if kind == "own":
            decode = prefill = artifact(b, model, GEN["max_len"])
        elif generation_refused(model):
            continue
        else:
            decode = artifact(b, model, GEN["max_len"], "decode")
            prefill = artifact(b, model, GEN["prompt_tokens"], "prefill")
            if spec.runtime == "litert" and not GEN["tflite_prefill"]:
                prefill = None
        out.append(
            {
                "backend": b,
                "runtime": spec.runtime,
                "precision": spec.precision,
                "options": spec.options,
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
