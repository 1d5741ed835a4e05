# Model preparation: the HF folder, the evaluation inputs and the PyTorch reference.
# Resources: mem_mb and runtime (minutes) are predicted for each model's size from measured
# stage costs (lmship.sizes; override: --set-resources <rule>:mem_mb=<MB>).


rule prepare_model:
    output:
        model=directory("results/{model}/hf"),
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "benchmarks/prepare_model/{model}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("prepare_model"),
        runtime=need_min("prepare_model"),
    params:
        spec=model_spec,
    script:
        "../scripts/prepare_model.py"


rule eval_text:
    output:
        text="results/eval_text.txt",
    log:
        "logs/eval_text.log",
    benchmark:
        "benchmarks/eval_text.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=500,
        runtime=5,
    script:
        "../scripts/eval_text.py"


rule eval_inputs:
    input:
        model=rules.prepare_model.output.model,
        text=rules.eval_text.output.text,
    output:
        inputs="results/{model}/seq{seq}/eval_inputs.npz",
    log:
        "logs/eval_inputs/{model}_seq{seq}.log",
    benchmark:
        "benchmarks/eval_inputs/{model}_seq{seq}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("eval_inputs"),
        runtime=need_min("eval_inputs"),
    params:
        batch_size=config["batch_size"],
        text_samples=config["eval"]["text_samples"],
        random_samples=config["eval"]["random_samples"],
        seed=config["eval"]["seed"],
    script:
        "../scripts/eval_inputs.py"


rule reference_logits:
    input:
        model=rules.prepare_model.output.model,
        inputs=rules.eval_inputs.output.inputs,
    output:
        logits="results/{model}/seq{seq}/reference_logits.npy",
        metrics="results/{model}/seq{seq}/metrics/reference_logits.json",
    log:
        "logs/reference_logits/{model}_seq{seq}.log",
    benchmark:
        "benchmarks/reference_logits/{model}_seq{seq}.tsv"
    # every forward-graph gate reads these logits: they are made first
    priority: 2
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("reference_logits"),
        runtime=need_min("reference_logits"),
    script:
        "../scripts/reference_logits.py"


rule quantize_pytorch:
    input:
        model=rules.prepare_model.output.model,
    output:
        artifact=directory("results/{model}/pytorch_int8"),
    log:
        "logs/quantize_pytorch/{model}.log",
    benchmark:
        "benchmarks/quantize_pytorch/{model}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("quantize_pytorch"),
        runtime=need_min("quantize_pytorch"),
    script:
        "../scripts/quantize_pytorch.py"
