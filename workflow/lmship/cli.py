"""Command-line helpers shared by the stages' ``main()`` functions.

Defaults that the workflow takes from the configuration are read from the
config schema (:func:`config_default`), so a stage run alone and a stage run
by Snakemake with the default ``config.yaml`` use the same values.
"""

from __future__ import annotations

import argparse
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA = Path(__file__).resolve().parents[1] / "schemas" / "config.schema.yaml"


@cache
def _schema() -> dict:
    import yaml

    return yaml.safe_load(SCHEMA.read_text())


def config_default(*keys: str) -> Any:
    """The schema's default of the config key ``keys`` (e.g. ``config_default("export", "opset")``)."""
    node = _schema()
    for key in keys:
        node = node["properties"][key]
    return node["default"]


def parser(stage: str, doc: str) -> argparse.ArgumentParser:
    """The parser of ``python -m lmship <stage>``, described by the first paragraph of ``doc``."""
    return argparse.ArgumentParser(prog=f"lmship {stage}", description=doc.split("\n\n")[0])


def add_checked_stage_arguments(parser: argparse.ArgumentParser, source: str, help: str) -> None:
    """Command-line arguments shared by the conversion stages checked against PyTorch."""
    parser.add_argument(source, type=Path, required=True, help=help)
    parser.add_argument("--inputs", type=Path, required=True, help="evaluation inputs (.npz)")
    parser.add_argument("--reference", type=Path, required=True, help="PyTorch reference logits (.npy)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, help="write the stage's metrics here (JSON)")
    parser.add_argument(
        "--min-top1",
        type=float,
        default=config_default("conversion_gate", "fp32"),
        help="fail below this top-1 agreement (%%; default: conversion_gate.fp32)",
    )
    add_logit_gate_arguments(parser)
    parser.add_argument("--log", type=Path)


def add_logit_gate_arguments(parser: argparse.ArgumentParser) -> None:
    """The fp32 logit bounds of a conversion gate, defaulting to the config's."""
    for flag, key, what in (
        ("--max-rel-diff", "fp32_max_rel_logit_diff", "max |logit difference| / std(reference logits)"),
        ("--max-mean-kld", "fp32_max_mean_kld", "mean KL divergence to PyTorch (nats)"),
    ):
        value = config_default("conversion_gate", key)
        parser.add_argument(flag, type=float, default=value, help=f"fp32: fail above this {what} (default: {value})")


def conversion_gate(precision: str) -> float:
    """The default minimum top-1 agreement (%) of a conversion at ``precision`` (0: not gated)."""
    gates = _schema()["properties"]["conversion_gate"]["properties"]
    return float(gates[precision]["default"]) if precision in gates else 0.0
