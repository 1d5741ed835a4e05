# ONNX -> OpenVINO IR (fp32 weights; run at f32 or bf16 inference precision) -> NNCF
# weight-compressed IRs. Each writes its folder: model.xml + model.bin + ops.json +
# metrics.json, or failed.json (lmship.records). Resources: mem_mb is the peak RSS
# measured on SmolLM2-135M at sequence length 128 plus headroom (raise it for bigger
# models: --set-resources <rule>:mem_mb=<MB>); runtime in minutes.


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
        mem_mb=4000,
        runtime=15,
    params:
        min_top1=config["conversion_gate"]["fp32"],
    script:
        "../scripts/openvino_ir.py"


rule compress_openvino:
    input:
        unpack(calibration_inputs),
        ir=rules.openvino_ir.output.artifact,
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
        mem_mb=3000,
        runtime=20,
    params:
        calibration_samples=config["openvino"]["calibration_samples"],
    script:
        "../scripts/compress_openvino.py"
