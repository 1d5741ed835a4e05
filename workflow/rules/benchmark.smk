# Latency per backend and thread count, accuracy per backend, the CPU's matmul limit.
# Resources: mem_mb and runtime (minutes) are predicted for each model's size from measured
# stage costs (lmship.sizes; override: --set-resources <rule>:mem_mb=<MB>).


rule timing:
    input:
        artifacts=lambda wc: [
            artifact(b, wc.model, wc.seq) for b in backends_of(wc.model)
        ],
        inputs=rules.eval_inputs.output.inputs,
        hf=prepared,
    output:
        csv="results/{model}/seq{seq}/timing/t{threads}.csv",
    log:
        "logs/timing/{model}_seq{seq}_t{threads}.log",
    benchmark:
        "benchmarks/timing/{model}_seq{seq}_t{threads}.tsv"
    conda:
        "../../envs/runtimes.yaml"
    threads: lambda wc: int(wc.threads)
    resources:
        mem_mb=need_mb("timing"),
        runtime=need_min("timing"),
        bench_lock=BENCH_LOCK,
    params:
        backends=lambda wc: timed_backends(wc.model, wc.seq),
        rounds=config["benchmark"]["rounds"],
        warmup=config["benchmark"]["warmup"],
        repeats=config["benchmark"]["repeats"],
        min_seconds=config["benchmark"]["min_seconds"],
    script:
        "../scripts/timing.py"


rule evaluate:
    input:
        artifact=backend_artifact,
        inputs=rules.eval_inputs.output.inputs,
        reference=rules.reference_logits.output.logits,
        hf=prepared,
    output:
        json="results/{model}/seq{seq}/accuracy/{backend}.json",
    log:
        "logs/evaluate/{model}_seq{seq}_{backend}.log",
    benchmark:
        "benchmarks/evaluate/{model}_seq{seq}_{backend}.tsv"
    conda:
        "../../envs/runtimes.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("evaluate"),
        runtime=need_min("evaluate"),
    params:
        backend=backend_info,
        tiers=config["quality_tiers"],
    script:
        "../scripts/evaluate.py"


rule machine_limit:
    output:
        json="results/machine_limit/t{threads}.json",
    log:
        "logs/machine_limit/t{threads}.log",
    benchmark:
        "benchmarks/machine_limit/t{threads}.tsv"
    conda:
        "../../envs/runtimes.yaml"
    threads: lambda wc: int(wc.threads)
    resources:
        mem_mb=1000,
        runtime=5,
        bench_lock=BENCH_LOCK,
    script:
        "../scripts/machine_limit.py"


rule generation:
    input:
        artifacts=lambda wc: generation_artifacts(wc.model),
        host=lambda wc: [] if generation_refused(wc.model) else host_npz(wc.model),
        inputs=lambda wc: prompt_inputs(wc.model),
        tiers=lambda wc: generation_tiers(wc.model),
        hf=prepared,
    output:
        csv="results/{model}/generation/t{threads}.csv",
    log:
        "logs/generation/{model}_t{threads}.log",
    benchmark:
        "benchmarks/generation/{model}_t{threads}.tsv"
    conda:
        "../../envs/runtimes.yaml"
    threads: lambda wc: int(wc.threads)
    resources:
        mem_mb=need_mb("generation"),
        runtime=need_min("generation"),
        bench_lock=BENCH_LOCK,
    params:
        backends=lambda wc: generation_backends(wc.model),
        rounds=config["benchmark"]["rounds"],
        prompts=GEN["prompts"],
        new_tokens=GEN["new_tokens"],
        max_len=GEN["max_len"],
        strictest_tier=list(config["quality_tiers"])[0],
    script:
        "../scripts/generation.py"


rule bandwidth:
    output:
        json="results/machine_limit/bandwidth_t{threads}.json",
    log:
        "logs/bandwidth/t{threads}.log",
    benchmark:
        "benchmarks/bandwidth/t{threads}.tsv"
    conda:
        "../../envs/runtimes.yaml"
    threads: lambda wc: int(wc.threads)
    resources:
        mem_mb=2500,
        runtime=5,
        bench_lock=BENCH_LOCK,
    script:
        "../scripts/bandwidth.py"
