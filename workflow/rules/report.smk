# Tables and the comparison plot.


rule accuracy_table:
    input:
        jsons=lambda wc: expand(
            "results/{model}/seq{seq}/accuracy/{backend}.json",
            model=wc.model,
            seq=wc.seq,
            backend=[b for b in BACKEND_NAMES if b != REFERENCE],
        ),
    output:
        csv=report(
            "results/{model}/seq{seq}/accuracy.csv",
            caption="../report/accuracy.rst",
            category="Accuracy",
            labels={"model": "{model}", "sequence": "{seq}"},
        ),
    log:
        "logs/accuracy_table/{model}_seq{seq}.log",
    benchmark:
        "benchmarks/accuracy_table/{model}_seq{seq}.tsv"
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=MEM_MB["accuracy_table"],
        runtime=5,
    script:
        "../scripts/accuracy_table.py"


rule summary:
    input:
        timing=timing_csvs(),
        accuracy=accuracy_jsons(),
        machine=machine_jsons(),
        models=expand("results/{model}/hf", model=MODELS),
    output:
        csv=report(
            "results/summary.csv", caption="../report/summary.rst", category="Summary"
        ),
        md="results/summary.md",
    log:
        "logs/summary.log",
    benchmark:
        "benchmarks/summary.tsv"
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=MEM_MB["summary"],
        runtime=5,
    params:
        models=MODELS,
    script:
        "../scripts/summary.py"


rule plot:
    input:
        summary=rules.summary.output.csv,
    output:
        png=report("results/plot.png", caption="../report/plot.rst", category="Summary"),
    log:
        "logs/plot.log",
    benchmark:
        "benchmarks/plot.tsv"
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=MEM_MB["plot"],
        runtime=5,
    script:
        "../scripts/plot.py"
