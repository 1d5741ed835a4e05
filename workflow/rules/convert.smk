# ONNX -> TensorFlow SavedModel (onnx2tf) -> TFLite fp32 / fp16 / int8, builtin ops only.
# Resources: mem_mb is the peak RSS measured on SmolLM2-135M at sequence length 128 plus
# headroom (raise it for bigger models: --set-resources <rule>:mem_mb=<MB>); runtime in minutes.


rule savedmodel:
    input:
        unpack(graph_check),
        onnx=rules.simplify_onnx.output.onnx,
    output:
        savedmodel=directory("results/{model}/{graph}{seq}/savedmodel"),
        metrics="results/{model}/{graph}{seq}/metrics/savedmodel.json",
    log:
        "logs/savedmodel/{model}_{graph}{seq}.log",
    benchmark:
        "benchmarks/savedmodel/{model}_{graph}{seq}.tsv"
    priority: 1
    conda:
        "../../envs/tensorflow.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=40,
    params:
        onnx2tf=config["savedmodel"]["onnx2tf"],
        fast_weight_matmul=config["savedmodel"]["fast_weight_matmul"],
        min_top1=config["conversion_gate"]["fp32"],
        max_rel_diff=config["conversion_gate"]["fp32_max_rel_logit_diff"],
        max_mean_kld=config["conversion_gate"]["fp32_max_mean_kld"],
    script:
        "../scripts/savedmodel.py"


rule tflite:
    input:
        unpack(graph_check),
        savedmodel=rules.savedmodel.output.savedmodel,
    output:
        tflite="results/{model}/{graph}{seq}/tflite_{precision}.tflite",
        census="results/{model}/{graph}{seq}/tflite_{precision}.ops.json",
        metrics="results/{model}/{graph}{seq}/metrics/tflite_{precision}.json",
    log:
        "logs/tflite/{model}_{graph}{seq}_{precision}.log",
    benchmark:
        "benchmarks/tflite/{model}_{graph}{seq}_{precision}.tsv"
    priority: 1
    conda:
        "../../envs/tensorflow.yaml"
    threads: 1
    resources:
        mem_mb=10000,
        runtime=20,
    params:
        min_top1=lambda wc: config["conversion_gate"][wc.precision],
        # fp16 and int8 are judged by their quality tier: no logit bounds
        max_rel_diff=lambda wc: (
            config["conversion_gate"]["fp32_max_rel_logit_diff"]
            if wc.precision == "fp32"
            else None
        ),
        max_mean_kld=lambda wc: (
            config["conversion_gate"]["fp32_max_mean_kld"]
            if wc.precision == "fp32"
            else None
        ),
    script:
        "../scripts/tflite.py"
