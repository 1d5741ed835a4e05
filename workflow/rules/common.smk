# Helper functions, config validation, wildcard constraints and target lists.
# No rules here.

import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from lmship import StageError  # noqa: E402
from lmship.backends import BACKENDS, REFERENCE  # noqa: E402
from lmship.checks import check_hub_reachable, check_local_folder  # noqa: E402
from lmship.configcheck import check_config  # noqa: E402
from lmship.host import total_memory_mb  # noqa: E402
from lmship.runlock import record_owner, remove_stale_lock  # noqa: E402

SCHEMA = Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"

# 1. Reject a bad config before any job runs, naming key, value and what is allowed;
#    then let Snakemake's own validation fill in the schema's defaults.
try:
    check_config(config, SCHEMA)
except StageError as exc:
    raise WorkflowError(str(exc)) from None
validate(config, SCHEMA)

MODELS = list(config["models"])
SEQ_LENS = [int(s) for s in config["seq_lens"]]
THREADS = [int(t) for t in config["benchmark"]["threads"]]
BACKEND_NAMES = list(dict.fromkeys([REFERENCE, *config["backends"]]))


# 2. Check model sources that can be checked without running anything.
def _check_sources():
    problems = []
    for name, spec in config["models"].items():
        prepared = Path("results") / name / "hf" / "config.json"
        try:
            if spec["source"] == "local":
                check_local_folder(Path(spec["path"]))
            elif spec["source"] == "gguf" and not Path(spec["path"]).is_file():
                raise StageError(
                    f"GGUF file {spec['path']!r} does not exist (resolved: {Path(spec['path']).resolve()})"
                )
            elif spec["source"] == "hub" and not prepared.exists():
                check_hub_reachable(spec["id"])
        except StageError as exc:
            problems.append(f"model {name!r}: {exc}")
    if problems:
        raise WorkflowError("\n".join(problems))


_check_sources()


# 3. Machine-wide resources the scheduler enforces, set here so nobody can forget them.
#    bench_lock: every compute job takes 1, a timing job takes all of it, so a timing
#    job never runs next to any other compute job (whatever --cores says).
BENCH_LOCK = 1000
if "bench_lock" not in workflow.global_resources:
    workflow.register_resource("bench_lock", BENCH_LOCK)


# Memory (MB) declared by the rules, from the peak RSS measured on SmolLM2-135M at sequence
# length 128 (benchmarks/*.tsv, max_rss) plus headroom. Bigger models need more:
# raise them with --set-resources <rule>:mem_mb=<MB>.
MEM_MB = {
    "prepare_model": 3000,
    "eval_inputs": 1000,
    "reference_logits": 3000,
    "quantize_pytorch": 3000,
    "export_onnx": 6000,
    "simplify_onnx": 8000,
    "quantize_onnx": 4000,
    "savedmodel": 8000,
    "tflite": 10000,
    "timing": 3000,
    "evaluate": 5000,
    "machine_limit": 1000,
    "accuracy_table": 1000,
    "summary": 1000,
    "plot": 1000,
}


# Locally, cap the sum of the running jobs' mem_mb at 92% of RAM unless the user
# set --resources mem_mb=...; on a cluster each job gets its own memory instead.
if (
    workflow.global_resources.get("_nodes") is None
    or workflow.global_resources["_nodes"].value is None
):
    if "mem_mb" not in workflow.global_resources and total_memory_mb():
        workflow.register_resource("mem_mb", int(total_memory_mb() * 0.92))
    _budget = workflow.global_resources.get("mem_mb")
    _budget = getattr(_budget, "value", _budget)
    _short = {
        r: mb for r, mb in MEM_MB.items() if isinstance(_budget, int) and mb > _budget
    }
    if _short:
        logger.warning(
            f"Memory budget mem_mb={_budget} is below what these stages needed on SmolLM2-135M: "
            + ", ".join(f"{r} {mb} MB" for r, mb in _short.items())
            + ". They will run one at a time with the whole budget; a model of that size may be "
            "killed for memory (the stage then fails and leaves no output). Smaller models fit."
        )


# 4. A run killed while holding the directory lock (SIGKILL, OOM, power cut) must not
#    block the next one: drop its lock if its process is gone (a live run keeps it).
if workflow.is_main_process:
    _stale = remove_stale_lock()
    if _stale:
        logger.warning(_stale)


wildcard_constraints:
    model="|".join(map(re.escape, MODELS)),
    seq=r"\d+",
    threads=r"\d+",
    backend="|".join(map(re.escape, BACKENDS)),
    precision="fp32|fp16|int8",
    variant="dynamic|block|q4exact",


# --------------------------------------------------------------------------- paths


def model_spec(wildcards):
    return config["models"][wildcards.model]


def backend_artifact(wildcards):
    """The file or folder a backend runs, as a path under results/."""
    b = BACKENDS[wildcards.backend]
    return f"results/{wildcards.model}/{b.artifact.format(seq=wildcards.seq)}"


def backend_info(wildcards):
    b = BACKENDS[wildcards.backend]
    return {"runtime": b.runtime, "precision": b.precision}


def tolerance(wildcards):
    return config["tolerances"][BACKENDS[wildcards.backend].precision]


def timing_csvs():
    return expand(
        "results/{model}/seq{seq}/timing/{backend}_t{threads}.csv",
        model=MODELS,
        seq=SEQ_LENS,
        backend=BACKEND_NAMES,
        threads=THREADS,
    )


def accuracy_jsons():
    return expand(
        "results/{model}/seq{seq}/accuracy/{backend}.json",
        model=MODELS,
        seq=SEQ_LENS,
        backend=[b for b in BACKEND_NAMES if b != REFERENCE],
    )


def machine_jsons():
    return expand("results/machine/matmul_t{threads}.json", threads=THREADS)


def conversion_targets():
    """Every artifact of the conversion chain, for every model and sequence length."""
    per_seq = [
        "results/{model}/seq{seq}/model.onnx",
        "results/{model}/seq{seq}/model.simplified.onnx",
        "results/{model}/seq{seq}/saved_model",
        "results/{model}/seq{seq}/model_fp32.tflite",
        "results/{model}/seq{seq}/model_fp16.tflite",
    ]
    return expand(per_seq, model=MODELS, seq=SEQ_LENS)


def all_targets():
    return [
        *conversion_targets(),
        *expand("results/{model}/seq{seq}/accuracy.csv", model=MODELS, seq=SEQ_LENS),
        "results/summary.csv",
        "results/summary.md",
        "results/plot.png",
    ]
