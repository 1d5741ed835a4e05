# ONNX -> OpenVINO IR (fp32 weights; run at f32 or bf16 inference precision) -> NNCF
# weight-compressed IRs. Resources: mem_mb is the peak RSS measured on SmolLM2-135M at
# sequence length 128 plus headroom (raise it for bigger models:
# --set-resources <rule>:mem_mb=<MB>); runtime in minutes.


rule openvino_ir:
    input:
        unpack(graph_check),
        onnx=rules.export_onnx.output.onnx,
    output:
        xml="results/{model}/{graph}{seq}/openvino.xml",
        bin="results/{model}/{graph}{seq}/openvino.bin",
        census="results/{model}/{graph}{seq}/openvino.ops.json",
        metrics="results/{model}/{graph}{seq}/metrics/openvino_ir.json",
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
        max_rel_diff=config["conversion_gate"]["fp32_max_rel_logit_diff"],
        max_mean_kld=config["conversion_gate"]["fp32_max_mean_kld"],
    script:
        "../scripts/openvino_ir.py"


rule compress_openvino:
    input:
        unpack(calibration_inputs),
        ir=rules.openvino_ir.output.xml,
        ir_bin=rules.openvino_ir.output.bin,
    output:
        xml="results/{model}/{graph}{seq}/openvino_{compression}.xml",
        bin="results/{model}/{graph}{seq}/openvino_{compression}.bin",
        census="results/{model}/{graph}{seq}/openvino_{compression}.ops.json",
        metrics="results/{model}/{graph}{seq}/metrics/compress_openvino_{compression}.json",
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
