# PyTorch -> ONNX -> simplified ONNX -> ONNX Runtime int8 variants.
# Resources: mem_mb is the peak RSS measured on SmolLM2-135M at sequence length 128 plus
# headroom (raise it for bigger models: --set-resources <rule>:mem_mb=<MB>); runtime in minutes.
# priority 1 (here and in convert.smk): ONNX -> simplified ONNX -> SavedModel -> TFLite is
# the longest chain of one-thread stages, so it starts first and the short stages fill the
# other cores instead of holding it back to the end of the run.


rule export_onnx:
    input:
        unpack(graph_check),
        model=rules.prepare_model.output.model,
    output:
        onnx="results/{model}/{graph}{seq}/onnx.onnx",
        metrics="results/{model}/{graph}{seq}/metrics/export_onnx.json",
    log:
        "logs/export_onnx/{model}_{graph}{seq}.log",
    benchmark:
        "benchmarks/export_onnx/{model}_{graph}{seq}.tsv"
    priority: 1
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=6000,
        runtime=20,
    params:
        opset=config["export"]["opset"],
        min_top1=config["conversion_gate"]["fp32"],
        max_rel_diff=config["conversion_gate"]["fp32_max_rel_logit_diff"],
        max_mean_kld=config["conversion_gate"]["fp32_max_mean_kld"],
    script:
        "../scripts/export_onnx.py"


rule simplify_onnx:
    input:
        unpack(graph_check),
        onnx=rules.export_onnx.output.onnx,
    output:
        onnx="results/{model}/{graph}{seq}/onnx_simplified.onnx",
        metrics="results/{model}/{graph}{seq}/metrics/simplify_onnx.json",
    log:
        "logs/simplify_onnx/{model}_{graph}{seq}.log",
    benchmark:
        "benchmarks/simplify_onnx/{model}_{graph}{seq}.tsv"
    priority: 1
    conda:
        "../../envs/onnxsim.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=20,
    params:
        min_top1=config["conversion_gate"]["fp32"],
        max_rel_diff=config["conversion_gate"]["fp32_max_rel_logit_diff"],
        max_mean_kld=config["conversion_gate"]["fp32_max_mean_kld"],
    script:
        "../scripts/simplify_onnx.py"


rule quantize_onnx:
    input:
        onnx=rules.simplify_onnx.output.onnx,
    output:
        onnx="results/{model}/{graph}{seq}/onnx_{variant}.onnx",
        metrics="results/{model}/{graph}{seq}/metrics/quantize_onnx_{variant}.json",
    log:
        "logs/quantize_onnx/{model}_{graph}{seq}_{variant}.log",
    benchmark:
        "benchmarks/quantize_onnx/{model}_{graph}{seq}_{variant}.tsv"
    conda:
        "../../envs/onnxsim.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    script:
        "../scripts/quantize_onnx.py"


rule host_tables:
    input:
        model=rules.prepare_model.output.model,
    output:
        npz="results/{model}/decode{seq}/host.npz",
    log:
        "logs/host_tables/{model}_decode{seq}.log",
    benchmark:
        "benchmarks/host_tables/{model}_decode{seq}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=5,
    params:
        prompt_len=GEN["prompt_tokens"],
    script:
        "../scripts/host_tables.py"
