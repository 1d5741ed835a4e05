# Tables and the comparison plot.
# Resources: small and independent of the model's size (runtime in minutes).


rule accuracy_table:
    input:
        jsons=accuracy_jsons,
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
        mem_mb=1000,
        runtime=5,
    script:
        "../scripts/accuracy_table.py"


rule summary:
    input:
        timing=timing_csvs(),
        accuracy=accuracy_jsons(),
        references=reference_metrics(),
        machine=machine_jsons(),
        models=expand(rules.prepare_model.output.model, model=MODELS),
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
        mem_mb=1000,
        runtime=5,
    params:
        models=MODELS,
        references=model_seqs(),
        tiers=list(config["quality_tiers"]),
        max_round_spread_pct=config["benchmark"]["max_round_spread_pct"],
        max_p90_ratio=config["benchmark"]["max_p90_ratio"],
        skipped=skipped_backends(),
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
        mem_mb=1000,
        runtime=5,
    params:
        tiers=list(config["quality_tiers"]),
    script:
        "../scripts/plot.py"


rule quality_plot:
    input:
        summary=rules.summary.output.csv,
    output:
        png=report(
            "results/quality.png", caption="../report/quality.rst", category="Summary"
        ),
    log:
        "logs/quality_plot.log",
    benchmark:
        "benchmarks/quality_plot.tsv"
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        tiers=config["quality_tiers"],
    script:
        "../scripts/quality_plot.py"


rule generation_summary:
    input:
        csvs=generation_csvs(),
        bandwidth=bandwidth_jsons(),
        tiers=[t for m in generating_models() for t in generation_tiers(m)],
        models=expand(rules.prepare_model.output.model, model=generating_models()),
        host=[host_npz(m) for m in graph_models()],
    output:
        csv=report(
            "results/generation.csv",
            caption="../report/generation.rst",
            category="Generation",
        ),
        md="results/generation.md",
    log:
        "logs/generation_summary.log",
    benchmark:
        "benchmarks/generation_summary.tsv"
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        models=generating_models(),
        host_models=graph_models(),
        backends={m: generation_backends(m) for m in generating_models()},
        max_round_spread_pct=config["benchmark"]["max_round_spread_pct"],
        max_p90_ratio=config["benchmark"]["max_p90_ratio"],
        skipped=skipped_backends(),
    script:
        "../scripts/generation_summary.py"


rule generation_plot:
    input:
        summary=rules.generation_summary.output.csv,
    output:
        png=report(
            "results/generation.png",
            caption="../report/generation.rst",
            category="Generation",
        ),
    log:
        "logs/generation_plot.log",
    benchmark:
        "benchmarks/generation_plot.tsv"
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        tiers=list(config["quality_tiers"]),
    script:
        "../scripts/generation_plot.py"


rule ship_plot:
    input:
        summary=rules.summary.output.csv,
    output:
        png=report("results/ship.png", caption="../report/ship.rst", category="Summary"),
    log:
        "logs/ship_plot.log",
    benchmark:
        "benchmarks/ship_plot.tsv"
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        tiers=list(config["quality_tiers"]),
    script:
        "../scripts/ship_plot.py"


# Not part of `all`: `snakemake publish` after a run copies its answer to
# docs/results/<models>/, which the README shows (commit the copies to change the front page).
rule publish:
    input:
        rules.summary.output.md,
        rules.ship_plot.output.png,
        rules.plot.output.png,
        rules.quality_plot.output.png,
        published_generation(),
    output:
        folder=directory(published_folder()),
    log:
        "logs/publish.log",
    benchmark:
        "benchmarks/publish.tsv"
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=5,
    params:
        benchmarks="benchmarks",
        facts=run_facts(),
    script:
        "../scripts/publish.py"
