"""The stages' command lines: :func:`command` derives each from the stage function's signature.

Defaults that the workflow takes from the configuration are read from the
config schema (:func:`config_default`), so a stage run alone and a stage run
by Snakemake with the default ``config.yaml`` use the same values.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Callable, Sequence
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


#: The fp32 conversion gate's parameters and the config keys of their defaults.
FP32_GATE = {
    "min_top1": ("conversion_gate", "fp32"),
    "max_rel_diff": ("conversion_gate", "fp32_max_rel_logit_diff"),
    "max_mean_kld": ("conversion_gate", "fp32_max_mean_kld"),
}


def command(
    function: Callable[..., Any],
    *,
    config: dict[str, tuple[str, ...]] | None = None,
    defaults: dict[str, Any] | None = None,
    choices: dict[str, Sequence[str]] | None = None,
) -> Callable[[list[str] | None], Any]:
    """The ``main(argv)`` of ``python -m lmship <stage>``, derived from the stage function's signature.

    One option per parameter (``--hf-dir`` for ``hf_dir``), typed by its annotation: a path, a number,
    a string, a flag (``bool``), several values (``list[...]``) or a YAML / JSON value (``dict``); its
    default is the function's, or the config schema's where ``config`` names the key
    (``{"opset": ("export", "opset")}``) or ``defaults`` gives one; required where there is none.
    ``--log`` writes the stage's log to a file. So a stage's command line cannot drift from its function.
    """
    import inspect
    import typing

    signature = inspect.signature(function)
    hints = typing.get_type_hints(function)
    config, defaults, choices = config or {}, defaults or {}, choices or {}
    for name in (*config, *defaults, *choices):
        if name not in signature.parameters:
            raise TypeError(f"{function.__name__} has no parameter {name!r}")

    def main(argv: list[str] | None = None) -> Any:
        from .logs import log_to

        p = parser(function.__name__, function.__doc__ or "")
        for name, param in signature.parameters.items():
            default = config_default(*config[name]) if name in config else defaults.get(name, param.default)
            hint = hints.get(name, str)
            options = _option(hint)
            if default is inspect.Parameter.empty and type(None) in typing.get_args(hint):
                default = None  # ``X | None`` without a default: optional
            if default is inspect.Parameter.empty:
                options["required"] = True
            else:
                options["default"] = default
                options["help"] = f"default: {default}"
            if name in choices:
                options["choices"] = list(choices[name])
            p.add_argument("--" + name.replace("_", "-"), **options)
        p.add_argument("--log", type=Path, help="write the stage's log here")
        args = vars(p.parse_args(argv))
        with log_to(args.pop("log")):
            return function(**args)

    main.__doc__ = f"``python -m lmship {function.__name__}``: {function.__name__}() from the command line."
    main.derived_from = function  # type: ignore[attr-defined]
    return main


def _option(hint: Any) -> dict[str, Any]:
    """argparse options of a parameter annotated ``hint`` (``X | None`` reads as ``X``)."""
    import typing

    import yaml

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    origin = typing.get_origin(hint) or hint
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin in (list, tuple) and typing.get_args(hint)[:1] and typing.get_args(hint)[0] in (Path, int, float, str):
        return {"nargs": "+", "type": typing.get_args(hint)[0]}
    if hint in (Path, int, float, str):
        return {"type": hint}
    return {"type": yaml.safe_load}  # dicts and anything else: a YAML / JSON value
