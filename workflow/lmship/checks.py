"""Checks of model sources that run before any job (standard library only).

The Snakefile calls these while it parses, so they must not import torch or
any other heavy package: with ``--sdm conda`` the main Snakemake process may
have none of them.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from . import StageError
from .families import is_causal_lm_architecture

WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "pytorch_model.bin", "pytorch_model-*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
HUB_ENDPOINT = "https://huggingface.co"


def check_local_folder(path: Path) -> None:
    """Raise :class:`StageError` unless ``path`` is a usable HF causal-LM folder."""
    path = Path(path)
    hint = (
        "A 'local' model needs a folder in Hugging Face layout: config.json, the weights "
        "(model.safetensors) and the tokenizer files (tokenizer.json), as written by save_pretrained()."
    )
    if not path.exists():
        raise StageError(f"local model folder {str(path)!r} does not exist (resolved: {path.resolve()}). {hint}")
    if not path.is_dir():
        raise StageError(f"local model path {str(path)!r} is not a folder. {hint}")
    if not any(path.iterdir()):
        raise StageError(f"local model folder {str(path)!r} is empty. {hint}")
    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json")
    if not any(any(path.glob(p)) for p in WEIGHT_PATTERNS):
        missing.append("weights (model.safetensors or pytorch_model.bin)")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        missing.append("tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    if missing:
        raise StageError(f"local model folder {str(path)!r} lacks {', '.join(missing)}. {hint}")
    check_causal_lm_config(path / "config.json")


def check_causal_lm_config(config_json: Path) -> None:
    """Reject configs whose architecture is not a causal language model (stdlib only: runs at parse time)."""
    try:
        cfg = json.loads(Path(config_json).read_text())
    except (OSError, ValueError) as exc:
        raise StageError(f"cannot read {config_json}: {exc}") from exc
    archs = cfg.get("architectures") or []
    if archs and not any(is_causal_lm_architecture(a) for a in archs):
        raise StageError(
            f"{config_json}: architecture {archs} (model_type {cfg.get('model_type')!r}) is not a causal "
            "language model; this workflow converts the models AutoModelForCausalLM loads (*ForCausalLM, "
            "*LMHeadModel: logits over the vocabulary)."
        )


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HUB_ENDPOINT).rstrip("/")


def _hub_snapshots(repo_id: str) -> Path:
    """The folder of the local Hugging Face cache's snapshots of ``repo_id`` (it may not exist)."""
    home = Path(
        os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "hub"
    )
    return home / ("models--" + repo_id.replace("/", "--")) / "snapshots"


def hub_cached(repo_id: str) -> bool:
    """True when the model's config.json is already in the local Hugging Face cache."""
    snapshots = _hub_snapshots(repo_id)
    if not snapshots.is_dir():
        return False
    return any((snap / "config.json").exists() for snap in snapshots.iterdir())


def check_hub_reachable(repo_id: str, timeout: float = 5.0) -> None:
    """Fail within ``timeout`` seconds when the hub cannot be reached.

    A model already in the local cache passes without a network check.
    """
    if hub_cached(repo_id):
        return
    how_to = (
        "Without the hub, download the model elsewhere and point the workflow at the folder: "
        "in config.yaml set `source: local` and `path: <folder with config.json, model.safetensors, tokenizer.json>`."
    )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        raise StageError(f"hub model {repo_id!r} is not in the local cache and HF_HUB_OFFLINE is set. {how_to}")
    url = f"{hub_endpoint()}/api/models/{repo_id}"
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403, 404):
            raise StageError(
                f"hub model {repo_id!r}: {url} answered HTTP {exc.code} (no such model, or it is gated/private). "
                "Check the id, or log in with `hf auth login`."
            ) from exc
        raise StageError(f"hub model {repo_id!r}: {url} answered HTTP {exc.code}. {how_to}") from exc
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StageError(
            f"hub model {repo_id!r}: cannot reach {hub_endpoint()} within {timeout:.0f} s ({reason}). {how_to}"
        ) from exc


def model_config(spec: dict, prepared: Path) -> dict | None:
    """The config of a configured model (an entry of ``models:``) as far as it is known before any job.

    ``random``: its ``architecture`` (``model_type`` llama unless named); ``local``: the folder's
    config.json; ``hub``: the config.json in the local Hugging Face cache; any source: the prepared
    folder's config.json once ``prepare_model`` wrote it. None when nothing is known yet (a GGUF
    model, or a hub model not in the cache, before its first preparation).
    """
    candidates = [Path(prepared) / "config.json"]
    if spec.get("source") == "local":
        candidates.insert(0, Path(spec["path"]) / "config.json")
    if spec.get("source") == "hub":
        candidates += sorted(_hub_snapshots(spec["id"]).glob("*/config.json"))
    for path in candidates:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    if spec.get("source") == "random":
        arch = dict(spec.get("architecture") or {})
        return {"model_type": arch.pop("model_type", "llama"), **arch}
    return None
