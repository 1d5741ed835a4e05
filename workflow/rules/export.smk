# PyTorch -> ONNX -> simplified ONNX -> ONNX Runtime int8 variants.
# Every conversion writes one folder: its artifact (model.onnx) with metrics.json, or a
# failed.json saying where and why it failed (lmship.records), so that one failed format
# never costs the summary. Resources: mem_mb and runtime (minutes) are predicted for each
# model's size from measured stage costs (lmship.sizes; override: --set-resources).
# priority 1 (here and in convert.smk): ONNX -> simplified ONNX -> SavedModel -> TFLite is
# the longest chain of one-thread stages, so it starts first and the short stages fill the
# other cores instead of holding it back to the end of the run.


rule export_onnx:
    input:
        unpack(graph_check),
        model=rules.prepare_model.output.model,
    output:
        artifact=directory("results/{model}/{graph}{seq}/onnx"),
    log:
        "logs/export_onnx/{model}_{graph}{seq}.log",
    benchmark:
        "benchmarks/export_onnx/{model}_{graph}{seq}.tsv"
    priority: 1
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("export_onnx"),
        runtime=need_min("export_onnx"),
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
        onnx=rules.export_onnx.output.artifact,
    output:
        artifact=directory("results/{model}/{graph}{seq}/onnx_simplified"),
    log:
        "logs/simplify_onnx/{model}_{graph}{seq}.log",
    benchmark:
        "benchmarks/simplify_onnx/{model}_{graph}{seq}.tsv"
    priority: 1
    conda:
        "../../envs/onnxsim.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("simplify_onnx"),
        runtime=need_min("simplify_onnx"),
    params:
        min_top1=config["conversion_gate"]["fp32"],
        max_rel_diff=config["conversion_gate"]["fp32_max_rel_logit_diff"],
        max_mean_kld=config["conversion_gate"]["fp32_max_mean_kld"],
    script:
        "../scripts/simplify_onnx.py"


# transformers' own ONNX exporter (transformers.exporters): prefill and decode-step graphs over a
# static cache inside the graph, fused for ONNX Runtime's CPU kernels; made once per model, for
# the generation length and the evaluation windows, and gated against PyTorch like every fp32 graph.
rule exported_onnx:
    input:
        model=rules.prepare_model.output.model,
        prompts=lambda wildcards: expand(
            rules.eval_inputs.output.inputs,
            model=wildcards.model,
            seq=SEQ_LENS[0],
        ),
    output:
        artifact=directory("results/{model}/ort_exporters"),
    log:
        "logs/exported_onnx/{model}.log",
    benchmark:
        "benchmarks/exported_onnx/{model}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("exported_onnx"),
        runtime=need_min("exported_onnx"),
    params:
        prompt_len=GEN["prompt_tokens"],
        max_len=max(GEN["max_len"], *SEQ_LENS),
        max_rel_diff=config["conversion_gate"]["fp32_max_rel_logit_diff"],
        max_mean_kld=config["conversion_gate"]["fp32_max_mean_kld"],
    script:
        "../scripts/exported_onnx.py"


rule quantize_onnx:
    input:
        onnx=quantize_source,
        hf=prepared,
    output:
        artifact=directory("results/{model}/{graph}{seq}/onnx_{variant}"),
    log:
        "logs/quantize_onnx/{model}_{graph}{seq}_{variant}.log",
    benchmark:
        "benchmarks/quantize_onnx/{model}_{graph}{seq}_{variant}.tsv"
    conda:
        "../../envs/onnxsim.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("quantize_onnx"),
        runtime=need_min("quantize_onnx"),
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
        mem_mb=need_mb("host_tables"),
        runtime=need_min("host_tables"),
    params:
        prompt_len=GEN["prompt_tokens"],
    script:
        "../scripts/host_tables.py"
