# Model preparation: the HF folder, the evaluation inputs and the PyTorch reference.


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
        mem_mb=MEM_MB["prepare_model"],
        runtime=20,
        bench_lock=1,
    params:
        spec=model_spec,
    script:
        "../scripts/prepare_model.py"


rule eval_inputs:
    input:
        model=rules.prepare_model.output.model,
    output:
        inputs="results/{model}/seq{seq}/inputs.npz",
    log:
        "logs/eval_inputs/{model}_seq{seq}.log",
    benchmark:
        "benchmarks/eval_inputs/{model}_seq{seq}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=MEM_MB["eval_inputs"],
        runtime=5,
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
        logits="results/{model}/seq{seq}/pytorch_logits.npy",
        metrics="results/{model}/seq{seq}/metrics/reference.json",
    log:
        "logs/reference_logits/{model}_seq{seq}.log",
    benchmark:
        "benchmarks/reference_logits/{model}_seq{seq}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 2
    resources:
        mem_mb=MEM_MB["reference_logits"],
        runtime=15,
        bench_lock=1,
    script:
        "../scripts/reference_logits.py"


rule quantize_pytorch:
    input:
        model=rules.prepare_model.output.model,
    output:
        model=directory("results/{model}/pytorch_int8"),
        metrics="results/{model}/metrics/pytorch_int8.json",
    log:
        "logs/quantize_pytorch/{model}.log",
    benchmark:
        "benchmarks/quantize_pytorch/{model}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=MEM_MB["quantize_pytorch"],
        runtime=10,
        bench_lock=1,
    script:
        "../scripts/quantize_pytorch.py"
