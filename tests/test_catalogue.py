"""The backend catalogue (lmship.backends) is the one source of truth: everything that must spell
its names (the config schema, the stages' variant lists, the rules) agrees with it, and every
rule declares what the scheduler needs (bench_lock, mem_mb, runtime, log, benchmark)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from workflow_helpers import SNAKEFILE, tiny_config, write_config

from lmship.backends import BACKENDS, PRECISIONS, REFERENCE, RUNTIMES, wildcard_values

REPO = Path(__file__).resolve().parents[1]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def test_schema_backends_are_the_catalogue():
    backends = SCHEMA["properties"]["backends"]
    assert backends["items"]["enum"] == list(BACKENDS)
    assert backends["default"] == list(BACKENDS)
    assert yaml.safe_load((REPO / "config.yaml").read_text())["backends"] == list(BACKENDS)


def test_config_tiers_are_the_schema_defaults():
    """config.yaml spells the tiers out for users; they must equal the schema's defaults (one set of values)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    assert config["quality_tiers"] == SCHEMA["properties"]["quality_tiers"]["default"]


def test_catalogue_entries_are_consistent():
    assert REFERENCE in BACKENDS
    for name, b in BACKENDS.items():
        assert b.name == name and b.runtime in RUNTIMES and b.precision in PRECISIONS, b


def test_stage_variants_are_the_catalogue_wildcards():
    from lmship.quantize_onnx import VARIANTS
    from lmship.tflite import PRECISIONS as TFLITE_PRECISIONS

    assert wildcard_values("quantize_onnx", "variant") == list(VARIANTS)
    assert wildcard_values("tflite", "precision") == list(TFLITE_PRECISIONS)


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """The workflow's rules as Snakemake parsed them (no job runs)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

    workdir = tmp_path_factory.mktemp("rules")
    config = write_config(workdir, tiny_config())
    with SnakemakeApi(OutputSettings(quiet={"all"})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=2),
            config_settings=ConfigSettings(configfiles=[config]),
            storage_settings=StorageSettings(),
            snakefile=SNAKEFILE,
            workdir=workdir,
        )
        return workflow._workflow


@pytest.fixture(scope="module")
def rules(workflow):
    return {r.name: r for r in workflow.rules}


def test_every_rule_takes_the_bench_lock(rules):
    for name, rule in rules.items():
        assert rule.resources.get("bench_lock").value >= 1, name
    assert rules["timing"].resources.get("bench_lock").value == rules["machine_limit"].resources.get("bench_lock").value
    assert rules["timing"].resources.get("bench_lock").value > 1


def test_every_rule_declares_resources_log_and_benchmark(rules, workflow):
    """A rule's mem_mb and runtime are constants or, for a stage whose need grows with the model, the fitted
    prediction (lmship.sizes), which falls back to that stage's measured default (RULE_DEFAULTS)."""
    defaults = workflow.globals["RULE_DEFAULTS"]
    for name, rule in rules.items():
        if name == "all":
            continue
        for resource in ("mem_mb", "runtime"):
            declared = rule.resources.get(resource)
            if declared.is_evaluable():
                assert name in defaults and all(v > 0 for v in defaults[name]), (name, resource)
            else:
                assert declared.value, (name, resource)
        assert rule.log and rule.benchmark, name


def test_every_backend_names_a_rule_output(rules):
    for b in BACKENDS.values():
        assert b.output in rules[b.rule].output._names, b
        # the rule's pattern without wildcard constraints ({model,tiny} -> {model})
        pattern = re.sub(r"\{(\w+),[^}]*\}", r"{\1}", str(getattr(rules[b.rule].output, b.output)))
        # {graph}: the forward pass or a generation graph, made by the same rule
        assert set(re.findall(r"\{(\w+)\}", pattern)) - {"model", "seq", "graph"} == set(b.wildcards), (b, pattern)
        stem = Path(pattern.format(model="m", seq=1, graph="seq", **b.wildcards)).name.split(".")[0]
        owner = REFERENCE if stem == "hf" else stem
        # a backend is its artifact's stem, or that artifact run at another precision (<stem>_<precision>)
        assert b.name in (owner, f"{owner}_{b.precision}"), (b, pattern)
        assert BACKENDS[owner].rule == b.rule and BACKENDS[owner].wildcards == b.wildcards, b


def test_bf16_backends_need_bf16_instructions():
    from lmship.backends import BF16_FLAGS, not_applicable

    bf16 = [b for b in BACKENDS.values() if "bf16" in (b.precision, b.arithmetic)]
    assert {b.name for b in bf16} >= {"pytorch_bf16", "openvino_bf16"}
    for b in bf16:
        assert b.cpu_flags == BF16_FLAGS
        assert "bf16 instructions" in not_applicable(b.name, "hub", ["avx2", "avx512f"])
        assert not_applicable(b.name, "hub", ["avx512f", "avx512_bf16"]) is None
        assert not_applicable(b.name, "hub", ["amx_bf16"]) is None
    assert not_applicable("openvino", "hub", ["avx2"]) is None
