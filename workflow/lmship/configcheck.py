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
        elif "propertyNames" in err.schema_path and path == ["models"]:
            lines.append(
                f"{where}: name {err.instance!r} is not allowed: {err.message}. Model names become folder "
                "names: use letters, digits, '.', '_' and '-' (at most 64 characters)."
            )
        elif "propertyNames" in err.schema_path:
            lines.append(
                f"{where}: name {err.instance!r} is not allowed: tier names use letters, digits, '-' and '_', "
                "and 'broken' is reserved for the tier of formats that meet no tier"
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
    if not problems:  # the meaning of values the schema accepted
        problems = semantic_problems(config)
    if problems:
        raise ConfigError(
            "invalid configuration (config.yaml or --config):\n  - "
            + "\n  - ".join(problems)
            + f"\nEvery key is documented in {schema_path}."
        )


#: Names directly under results/ that the workflow itself writes: a model of that name would collide.
RESERVED_NAMES = (
    "machine_limit",
    "summary.csv",
    "summary.md",
    "plot.png",
    "quality.png",
    "ship.png",
    "eval_text.txt",
    "generation.csv",
    "generation.md",
    "generation.png",
)


def semantic_problems(config: dict) -> list[str]:
    """What the schema cannot say: names that collide, sizes that do not divide, unknown onnx2tf options."""
    problems = []
    for name, spec in (config.get("models") or {}).items():
        if name in RESERVED_NAMES or name.startswith("."):
            problems.append(
                f"models: name {name!r} collides with the workflow's own output results/{name}; "
                f"choose another name (reserved: {', '.join(RESERVED_NAMES)})"
            )
        tokenizer = (spec or {}).get("tokenizer")
        if tokenizer and (spec or {}).get("source") != "random":
            problems.append(f"models.{name}.tokenizer: only a random model takes a tokenizer; remove the key")
        elif tokenizer and not Path(tokenizer).exists():
            problems.append(
                f"models.{name}.tokenizer: {tokenizer} does not exist (relative paths start at the working "
                "directory); give a folder holding tokenizer.json or a .gguf file with a vocabulary"
            )
        arch = (spec or {}).get("architecture") or {}
        hidden, heads, kv = arch.get("hidden_size"), arch.get("num_attention_heads"), arch.get("num_key_value_heads")
        explicit_head_dim = "head_dim" in arch  # then q/k/v widths need not equal hidden_size
        if isinstance(hidden, int) and isinstance(heads, int) and not explicit_head_dim and hidden % heads:
            fits = [h for h in range(1, hidden + 1) if hidden % h == 0 and abs(h - heads) <= 4]
            problems.append(
                f"models.{name}.architecture: hidden_size {hidden} is not divisible by num_attention_heads "
                f"{heads}; each head gets hidden_size / num_attention_heads dimensions. Choose a hidden_size "
                f"that {heads} divides (e.g. {heads * max(1, round(hidden / heads))}), heads that divide "
                f"{hidden} (e.g. {fits}), or set head_dim"
            )
        if isinstance(heads, int) and isinstance(kv, int) and kv > 0 and heads % kv:
            problems.append(
                f"models.{name}.architecture: num_attention_heads {heads} is not divisible by "
                f"num_key_value_heads {kv}; grouped-query attention shares each KV head among heads / kv_heads heads"
            )
    text_samples = (config.get("eval") or {}).get("text_samples", 0)
    calibration = (config.get("openvino") or {}).get("calibration_samples", 0)
    data_aware = [b for b in config.get("backends") or [] if b.endswith("_awq")]
    if data_aware and isinstance(text_samples, int) and isinstance(calibration, int):
        from .corpus import DOCUMENTS

        if text_samples + calibration > DOCUMENTS:
            problems.append(
                f"openvino.calibration_samples: {calibration} calibration windows and eval.text_samples "
                f"{text_samples} evaluation windows need {text_samples + calibration} different articles, the "
                f"prose has {DOCUMENTS}; lower one of them (calibration never uses an evaluated article)"
            )
    problems += _generation_problems(config)
    options = ((config.get("savedmodel") or {}).get("onnx2tf")) or {}
    known = onnx2tf_options()
    if known is not None:
        for key in options:
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                guess = f"; did you mean {close[0]!r}?" if close else ""
                problems.append(f"savedmodel.onnx2tf.{key}: not an option of the installed onnx2tf.convert(){guess}")
    return problems


def onnx2tf_options() -> set[str] | None:
    """Keyword arguments of the installed ``onnx2tf.convert``, read from its source without importing it.

    Importing onnx2tf loads TensorFlow (seconds); the signature is all that is needed.
    None when onnx2tf is not installed here (e.g. only the conda envs have it).
    """
    import ast
    import importlib.util

    spec = importlib.util.find_spec("onnx2tf")
    if spec is None or not spec.submodule_search_locations:
        return None
    source = Path(next(iter(spec.submodule_search_locations))) / "onnx2tf.py"
    if not source.is_file():
        return None
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef) and node.name == "convert":
            args = node.args
            return {a.arg for a in [*args.args, *args.kwonlyargs]}
    return None


def _generation_problems(config: dict) -> list[str]:
    """The generation lengths must fit the cache, and the prompts the evaluation prose."""
    from .cli import config_default

    gen = config.get("generation") or {}
    prompt, max_len, new, prompts = (
        gen.get(k, config_default("generation", k)) for k in ("prompt_tokens", "max_len", "new_tokens", "prompts")
    )
    samples = (config.get("eval") or {}).get("text_samples", config_default("eval", "text_samples"))
    problems = []
    if all(isinstance(v, int) for v in (prompt, max_len, new)) and prompt + new - 1 > max_len:
        problems.append(
            f"generation: prompt_tokens {prompt} + new_tokens {new} - 1 = {prompt + new - 1} do not fit the "
            f"cache of max_len {max_len} slots; raise max_len to at least {prompt + new - 1} or generate fewer tokens"
        )
    if isinstance(prompts, int) and isinstance(samples, int) and prompts > samples:
        problems.append(
            f"generation: prompts {prompts} exceeds eval.text_samples {samples}; the prompts are the "
            "evaluation set's prose windows"
        )
    return problems
