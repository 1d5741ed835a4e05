# PyTorch -> ONNX -> simplified ONNX -> ONNX Runtime int8 variants.


rule export_onnx:
    input:
        model=rules.prepare_model.output.model,
        inputs=rules.eval_inputs.output.inputs,
        reference=rules.reference_logits.output.logits,
    output:
        onnx="results/{model}/seq{seq}/model.onnx",
        metrics="results/{model}/seq{seq}/metrics/export.json",
    log:
        "logs/export_onnx/{model}_seq{seq}.log",
    benchmark:
        "benchmarks/export_onnx/{model}_seq{seq}.tsv"
    conda:
        "../../envs/model.yaml"
    threads: 1
    resources:
        mem_mb=MEM_MB["export_onnx"],
        runtime=20,
        bench_lock=1,
    params:
        opset=config["export"]["opset"],
        min_top1=config["conversion_gate"]["fp32"],
    script:
        "../scripts/export_onnx.py"


rule simplify_onnx:
    input:
        onnx=rules.export_onnx.output.onnx,
        inputs=rules.eval_inputs.output.inputs,
        reference=rules.reference_logits.output.logits,
    output:
        onnx="results/{model}/seq{seq}/model.simplified.onnx",
        metrics="results/{model}/seq{seq}/metrics/simplify.json",
    log:
        "logs/simplify_onnx/{model}_seq{seq}.log",
    benchmark:
        "benchmarks/simplify_onnx/{model}_seq{seq}.tsv"
    conda:
        "../../envs/onnxsim.yaml"
    threads: 1
    resources:
        mem_mb=MEM_MB["simplify_onnx"],
        runtime=20,
        bench_lock=1,
    params:
        min_top1=config["conversion_gate"]["fp32"],
    script:
        "../scripts/simplify_onnx.py"


rule quantize_onnx:
    input:
        onnx=rules.simplify_onnx.output.onnx,
    output:
        onnx="results/{model}/seq{seq}/model.int8-{variant}.onnx",
        metrics="results/{model}/seq{seq}/metrics/int8-{variant}.json",
    log:
        "logs/quantize_onnx/{model}_seq{seq}_{variant}.log",
    benchmark:
        "benchmarks/quantize_onnx/{model}_seq{seq}_{variant}.tsv"
    conda:
        "../../envs/onnxsim.yaml"
    threads: 1
    resources:
        mem_mb=MEM_MB["quantize_onnx"],
        runtime=20,
        bench_lock=1,
    script:
        "../scripts/quantize_onnx.py"
