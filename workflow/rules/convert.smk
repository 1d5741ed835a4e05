# ONNX -> TensorFlow SavedModel (onnx2tf) -> TFLite fp32 / fp16 / int8, builtin ops only.
# Each writes its folder: the artifact with metrics.json, or failed.json (lmship.records).
# Resources: mem_mb and runtime (minutes) are predicted for each model's size from measured
# stage costs (lmship.sizes; override: --set-resources <rule>:mem_mb=<MB>).


rule savedmodel:
    input:
        unpack(graph_check),
        onnx=rules.simplify_onnx.output.artifact,
    output:
        artifact=directory("results/{model}/{graph}{seq}/savedmodel"),
    log:
        "logs/savedmodel/{model}_{graph}{seq}.log",
    benchmark:
        "benchmarks/savedmodel/{model}_{graph}{seq}.tsv"
    priority: 1
    conda:
        "../../envs/tensorflow.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("savedmodel"),
        runtime=need_min("savedmodel"),
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
        savedmodel=rules.savedmodel.output.artifact,
    output:
        artifact=directory("results/{model}/{graph}{seq}/tflite_{precision}"),
    log:
        "logs/tflite/{model}_{graph}{seq}_{precision}.log",
    benchmark:
        "benchmarks/tflite/{model}_{graph}{seq}_{precision}.tsv"
    priority: 1
    conda:
        "../../envs/tensorflow.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("tflite"),
        runtime=need_min("tflite"),
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
