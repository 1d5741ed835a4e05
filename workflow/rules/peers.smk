# The peers: the runtimes users pick instead of converting, each from its vendor's own converter.
# Like every conversion, each rule writes one artifact folder (the vendor's files with
# metrics.json) or a failed.json saying where and why it failed (lmship.records). They are made
# once per model (their runtimes take any prompt length), from the prepared Hugging Face folder.


rule gguf:
    input:
        model=rules.prepare_model.output.model,
    output:
        artifact=directory("results/{model}/llamacpp_{quant}"),
    log:
        "logs/gguf/{model}_{quant}.log",
    benchmark:
        "benchmarks/gguf/{model}_{quant}.tsv"
    conda:
        "../../envs/peers.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("gguf"),
        runtime=need_min("gguf"),
    params:
        spec=lambda wildcards: config["models"][wildcards.model],
    script:
        "../scripts/gguf.py"


rule genai_model:
    input:
        model=rules.prepare_model.output.model,
    output:
        artifact=directory("results/{model}/ort_genai_{genai}"),
    log:
        "logs/genai_model/{model}_{genai}.log",
    benchmark:
        "benchmarks/genai_model/{model}_{genai}.tsv"
    conda:
        "../../envs/peers.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("genai_model"),
        runtime=need_min("genai_model"),
    script:
        "../scripts/genai_model.py"


rule stateful_ir:
    input:
        model=rules.prepare_model.output.model,
        prompts=lambda wildcards: expand(
            rules.eval_inputs.output.inputs,
            model=wildcards.model,
            seq=SEQ_LENS[0],
        ),
    output:
        artifact=directory("results/{model}/openvino_genai"),
    log:
        "logs/stateful_ir/{model}.log",
    benchmark:
        "benchmarks/stateful_ir/{model}.tsv"
    conda:
        "../../envs/peers.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("stateful_ir"),
        runtime=need_min("stateful_ir"),
    params:
        max_len=max(GEN["max_len"], *SEQ_LENS),
        max_rel_diff=config["conversion_gate"]["fp32_max_rel_logit_diff"],
        max_mean_kld=config["conversion_gate"]["fp32_max_mean_kld"],
    script:
        "../scripts/stateful_ir.py"


rule stateful_ir_q4_exact:
    input:
        stateful=rules.stateful_ir.output.artifact,
        model=rules.prepare_model.output.model,
        prompts=rules.stateful_ir.input.prompts,
    output:
        artifact=directory("results/{model}/openvino_genai_q4_exact"),
    log:
        "logs/stateful_ir_q4_exact/{model}.log",
    benchmark:
        "benchmarks/stateful_ir_q4_exact/{model}.tsv"
    conda:
        "../../envs/peers.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("stateful_ir_q4_exact"),
        runtime=need_min("stateful_ir_q4_exact"),
    params:
        max_rel_diff=config["conversion_gate"]["fp32_max_rel_logit_diff"],
        max_mean_kld=config["conversion_gate"]["fp32_max_mean_kld"],
    script:
        "../scripts/stateful_ir_q4_exact.py"
