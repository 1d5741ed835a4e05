# ONNX -> OpenVINO IR (fp32 weights; run at f32 or bf16 inference precision) -> NNCF
# weight-compressed IRs. Each writes its folder: model.xml + model.bin + ops.json +
# metrics.json, or failed.json (lmship.records). Resources: mem_mb and runtime (minutes)
# are predicted for each model's size from measured stage costs (lmship.sizes).


rule openvino_ir:
    input:
        unpack(graph_check),
        onnx=rules.export_onnx.output.artifact,
    output:
        artifact=directory("results/{model}/{graph}{seq}/openvino"),
    log:
        "logs/openvino_ir/{model}_{graph}{seq}.log",
    benchmark:
        "benchmarks/openvino_ir/{model}_{graph}{seq}.tsv"
    conda:
        "../../envs/openvino.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("openvino_ir"),
        runtime=need_min("openvino_ir"),
    params:
        min_top1=config["conversion_gate"]["fp32"],
        max_rel_diff=config["conversion_gate"]["fp32_max_rel_logit_diff"],
        max_mean_kld=config["conversion_gate"]["fp32_max_mean_kld"],
    script:
        "../scripts/openvino_ir.py"


rule compress_openvino:
    input:
        unpack(calibration_inputs),
        ir=rules.openvino_ir.output.artifact,
        hf=prepared,
    output:
        artifact=directory("results/{model}/{graph}{seq}/openvino_{compression}"),
    log:
        "logs/compress_openvino/{model}_{graph}{seq}_{compression}.log",
    benchmark:
        "benchmarks/compress_openvino/{model}_{graph}{seq}_{compression}.tsv"
    conda:
        "../../envs/openvino.yaml"
    threads: 1
    resources:
        mem_mb=need_mb("compress_openvino"),
        runtime=need_min("compress_openvino"),
    params:
        calibration_samples=config["openvino"]["calibration_samples"],
    script:
        "../scripts/compress_openvino.py"
