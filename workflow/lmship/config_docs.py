"""The configuration reference, written from the config schema so that it cannot drift from it.

:func:`config_docs` renders every key of ``workflow/schemas/config.schema.yaml`` (its type, default,
allowed values and description) as ``docs/configuration.md``; a test checks that the committed page
is what this function writes today.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

HEADER = """# Configuration

`config.yaml` says *what* to compute; threads, memory and output folders are not configuration
(they belong to the rules and the profiles). A wrong key or value is rejected before any job runs,
naming the key, the value and what is allowed. This page is written from
[`workflow/schemas/config.schema.yaml`](../workflow/schemas/config.schema.yaml) by
`python -m lmship config_docs` (run from `workflow/`); do not edit it by hand.
"""


def _type(node: dict) -> str:
    if "enum" in node:
        return "one of " + ", ".join(f"`{v}`" for v in node["enum"])
    kind = node.get("type", "")
    if kind == "array":
        items = node.get("items", {})
        inner = "`" + items["type"] + "`" if "type" in items else ("names" if "enum" in items else "items")
        return f"list of {inner}"
    return f"`{kind}`" if kind else ""


def _limits(node: dict) -> str:
    parts = []
    for key, text in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("pattern", "matches")):
        if key in node:
            parts.append(f"{text} `{node[key]}`")
    return ", ".join(parts)


def _default(node: dict) -> str:
    if "default" not in node or node["default"] in ({}, None):
        return ""
    value = node["default"]
    if isinstance(value, dict | list):
        text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    else:
        text = json.dumps(value)
    return f"`{text}`" if len(text) <= 60 else "see `config.yaml`"


def _rows(node: dict, prefix: str, defs: dict) -> list[str]:
    rows = []
    for name, child in (node.get("properties") or {}).items():
        if "$ref" in child:
            child = defs[child["$ref"].split("/")[-1]]
        key = f"{prefix}{name}"
        description = " ".join(str(child.get("description", "")).split())
        kind = ", ".join(filter(None, [_type(child), _limits(child)]))
        cells = [f"`{key}`", kind, _default(child), description]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        rows += _rows(child, key + ".", defs)
        extra = child.get("additionalProperties")
        if isinstance(extra, dict) and ("properties" in extra or "$ref" in extra):
            entry = defs[extra["$ref"].split("/")[-1]] if "$ref" in extra else extra
            rows += _rows(entry, key + ".<name>.", defs)
    return rows


def config_docs(schema: Path, out_md: Path) -> Path:
    """Write the configuration reference of ``schema`` to ``out_md``."""
    from .files import atomic_output

    tree = yaml.safe_load(Path(schema).read_text())
    defs = tree.get("$defs", {})
    lines = [HEADER, "| key | type | default | meaning |", "|---|---|---|---|", *_rows(tree, "", defs), ""]
    with atomic_output(Path(out_md)) as tmp:
        tmp.write_text("\n".join(lines))
    return Path(out_md)


def main(argv: list[str] | None = None) -> None:
    """``python -m lmship config_docs``: write the configuration reference from the config schema."""
    import argparse

    repo = Path(__file__).resolve().parents[2]
    parser = argparse.ArgumentParser(
        prog="python -m lmship config_docs", description="Write the configuration reference from the config schema."
    )
    parser.add_argument("--schema", type=Path, default=repo / "workflow" / "schemas" / "config.schema.yaml")
    parser.add_argument("--out", type=Path, default=repo / "docs" / "configuration.md")
    args = parser.parse_args(argv)
    print(config_docs(args.schema, args.out))
