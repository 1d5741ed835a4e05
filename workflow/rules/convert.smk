# ONNX -> TensorFlow SavedModel (onnx2tf) -> TFLite fp32 / fp16 / int8, builtin ops only.


rule savedmodel:
    input:
        onnx=rules.simplify_onnx.output.onnx,
        inputs=rules.eval_inputs.output.inputs,
        reference=rules.reference_logits.output.logits,
    output:
        saved_model=directory("results/{model}/seq{seq}/saved_model"),
        metrics="results/{model}/seq{seq}/metrics/savedmodel.json",
    log:
        "logs/savedmodel/{model}_seq{seq}.log",
    benchmark:
        "benchmarks/savedmodel/{model}_seq{seq}.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 1
    resources:
        mem_mb=MEM_MB["savedmodel"],
        runtime=40,
        bench_lock=1,
    params:
        onnx2tf=config["savedmodel"]["onnx2tf"],
        fast_weight_matmul=config["savedmodel"]["fast_weight_matmul"],
        min_top1=config["conversion_gate"]["fp32"],
    script:
        "../scripts/savedmodel.py"


rule tflite:
    input:
        saved_model=rules.savedmodel.output.saved_model,
        inputs=rules.eval_inputs.output.inputs,
        reference=rules.reference_logits.output.logits,
    output:
        tflite="results/{model}/seq{seq}/model_{precision}.tflite",
        census="results/{model}/seq{seq}/model_{precision}.ops.json",
        metrics="results/{model}/seq{seq}/metrics/tflite_{precision}.json",
    log:
        "logs/tflite/{model}_seq{seq}_{precision}.log",
    benchmark:
        "benchmarks/tflite/{model}_seq{seq}_{precision}.tsv"
    conda:
        "../../envs/tensorflow.yaml"
    threads: 2
    resources:
        mem_mb=MEM_MB["tflite"],
        runtime=20,
        bench_lock=1,
    params:
        min_top1=lambda wc: config["conversion_gate"].get(wc.precision, 0.0),
    script:
        "../scripts/tflite.py"
