"""Readable config errors: every problem named by key, value and what is allowed.

Runs before Snakemake builds the DAG (so before any job). Needs only
``jsonschema`` and ``yaml``, which come with Snakemake.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import yaml

from . import StageError


class ConfigError(StageError):
    """The configuration is invalid; the message lists every problem."""


def _key(path) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    return ".".join(parts).replace(".[", "[") or "(top level)"


def _schema_at(schema: dict, path, root: dict) -> dict:
    node = schema
    for part in path:
        if "$ref" in node:
            node = root["$defs"][node["$ref"].split("/")[-1]]
        if isinstance(part, int):
            node = node.get("items", {})
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
    if "$ref" in node:
        node = root["$defs"][node["$ref"].split("/")[-1]]
    return node


def describe_errors(config: dict, schema: dict) -> list[str]:
    """Return one readable line per schema violation (empty when valid)."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    lines = []
    for err in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path]):
        path = list(err.absolute_path)
        where = _key(path)
        node = _schema_at(schema, path, schema)
        hint = f" ({node['description'].strip()})" if node.get("description") else ""
        if err.validator == "additionalProperties":
            known = sorted(node.get("properties", {}))
            extra = sorted(set(err.instance) - set(known))
            for name in extra:
                close = difflib.get_close_matches(name, known, n=1)
                guess = f"; did you mean {close[0]!r}?" if close else ""
                lines.append(
                    f"unknown key {_key([*path, name])!r}{guess} Allowed keys under {where}: {', '.join(known)}"
                )
        elif "propertyNames" in err.schema_path:
            lines.append(
                f"{where}: name {err.instance!r} is not allowed: {err.message}. Model names become folder "
                "names: use letters, digits, '.', '_' and '-' (at most 64 characters)."
            )
        elif err.validator == "enum":
            lines.append(
                f"{where} = {err.instance!r} is not allowed; choose one of: {', '.join(map(str, err.validator_value))}"
            )
        elif err.validator == "required":
            lines.append(f"{where}: {err.message}{hint}")
        else:
            lines.append(f"{where} = {err.instance!r} is invalid: {err.message}{hint}")
    return lines


def check_config(config: dict, schema_path: Path) -> None:
    """Raise :class:`ConfigError` listing every problem of ``config``."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    if not isinstance(config, dict):
        raise ConfigError(f"the config must be a mapping, got {type(config).__name__}")
    problems = describe_errors(config, schema)
    if problems:
        raise ConfigError(
            "invalid configuration (config.yaml or --config):\n  - "
            + "\n  - ".join(problems)
            + f"\nEvery key is documented in {schema_path}."
        )
