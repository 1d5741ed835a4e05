# ONNX -> TensorFlow SavedModel (onnx2tf) -> TFLite fp32 / fp16 / int8, builtin ops only.
# Each writes its folder: the artifact with metrics.json, or failed.json (lmship.records).
# Resources: mem_mb is the peak RSS measured on SmolLM2-135M at sequence length 128 plus
# headroom (raise it for bigger models: --set-resources <rule>:mem_mb=<MB>); runtime in minutes.


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
        mem_mb=8000,
        runtime=40,
    params:
        onnx2tf=config["savedmodel"]["onnx2tf"],
        fast_weight_matmul=config["savedmodel"]["fast_weight_matmul"],
        min_top1=config["conversion_gate"]["fp32"],
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
        mem_mb=10000,
        runtime=20,
    params:
        min_top1=lambda wc: config["conversion_gate"][wc.precision],
    script:
        "../scripts/tflite.py"
