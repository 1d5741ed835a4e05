# Convert a causal language model from PyTorch to every deployment format,
# time each one on this CPU, check it against PyTorch, and plot the answer.
# Usage: snakemake --cores 4            (everything, see README.md)
#        snakemake results/plot.png     (one target and what it needs)

from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


# With --sdm apptainer every rule runs in the image built from ./Dockerfile
# (docker build -t lmship:latest .), read from the local Docker daemon
# (Apptainer's form is docker-daemon:<name>:<tag>, without "//"; a path to a
# local .sif file also works, used as is). By default rules run in the
# current environment, with --sdm conda in the env file named by each rule.
container: "docker-daemon:lmship:latest"


include: "workflow/rules/common.smk"
include: "workflow/rules/model.smk"
include: "workflow/rules/export.smk"
include: "workflow/rules/convert.smk"
include: "workflow/rules/openvino.smk"
include: "workflow/rules/peers.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/report.smk"


# Note which process holds the directory lock, so that a run killed with the
# lock held does not block the next one (see workflow/lmship/runlock.py).
onstart:
    record_owner()


# The run's last lines name every format that failed, where, and its log; their records are
# then removed so that the next run retries exactly those stages (see lmship/records.py).
onsuccess:
    report_failures()


onerror:
    report_failures()


rule all:
    default_target: True
    input:
        all_targets(),
    localrule: True


# Every rule takes a bench_lock; checks that need all rules (see common.smk).
finish_rules()
