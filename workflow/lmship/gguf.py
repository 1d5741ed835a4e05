"""GGUF files for llama.cpp: the ``gguf`` stage (rule ``gguf``), and what it is made with.

:func:`gguf` writes one artifact folder per quantisation (``results/{model}/llamacpp_<quant>/``):
``model.gguf`` and ``metrics.json``, for ``quant`` = ``f32`` (llama.cpp's own HF-to-GGUF converter
on the prepared Hugging Face folder), ``q8_0`` / ``q4_k_m`` (``llama_model_quantize`` of that F32
file) or ``original`` (the GGUF file a GGUF-sourced model was dequantised from, fetched again by
:func:`lmship.prepare_model.fetch_gguf`). Every file's vocabulary is checked to map ids as the HF
tokenizer does (:func:`check_vocabulary`): its logits are compared id by id.

- :func:`converter_dir`: llama.cpp's ``vendor/llama.cpp/convert_hf_to_gguf.py`` with its
  ``conversion/`` package and ``gguf-py/``, unpacked from the source distribution of the installed
  llama-cpp-python version (PyPI ships that version as an sdist only; the wheel built from it does
  not contain the converter) into the user's cache. Nothing of it is kept in this repository.
- Running a GGUF file is the runtime's part (:mod:`lmship.runtimes.llamacpp`).
"""

from __future__ import annotations

import ast
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from . import StageError
from .files import atomic_output, linked_copy, size_bytes, write_json
from .runtimes.llamacpp import DISTRIBUTION, _llama_cpp, not_applicable, system_info, version

log = logging.getLogger(__name__)

#: Output types of the converter itself.
CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
#: ``llama_ftype`` values of the types :func:`quantize` makes (llama.h).
QUANT_TYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
#: The ``quant`` wildcard of the rule: converted, requantised, or the model's own GGUF file.
QUANTS = ("f32", "q8_0", "q4_k_m", "original")
#: The sdist members the converter needs (below ``vendor/llama.cpp/``), and the vocabulary-only
#: GGUF files llama.cpp ships for its tokenizer tests (used by this project's tests).
_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/ggml-vocab-", "LICENSE")


# --------------------------------------------------------------------------- the converter


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lmship"


def converter_dir(cache: Path | None = None, sdist: Path | None = None) -> Path:
    """The unpacked ``vendor/llama.cpp`` (converter, ``conversion/``, ``gguf-py/``) of the installed version.

    Looked for in ``cache`` (default ``$XDG_CACHE_HOME/lmship`` or ``~/.cache/lmship``); else
    unpacked from ``sdist`` (or ``$LMSHIP_LLAMA_CPP_SDIST``), else from the sdist that
    ``pip download`` fetches for exactly the installed version. Its sha256 is recorded beside it.
    """
    wanted = version()
    target = Path(cache or _cache_root()) / f"llama_cpp_python-{wanted}"
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    sdist = sdist or (Path(os.environ["LMSHIP_LLAMA_CPP_SDIST"]) if os.environ.get("LMSHIP_LLAMA_CPP_SDIST") else None)
    target.parent.mkdir(parents=True, exist_ok=True)
    # several jobs may want the converter at once: one unpacks it, the others wait and use it
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "convert_hf_to_gguf.py").is_file():
            return target
        with tempfile.TemporaryDirectory(prefix="lmship-llama-sdist-") as tmp:
            archive = Path(sdist) if sdist else _download_sdist(wanted, Path(tmp))
            if not archive.is_file():
                raise StageError(f"llama-cpp-python source distribution {archive} does not exist")
            with atomic_output(target) as out:
                _unpack_converter(archive, wanted, out)
    return target


def _download_sdist(wanted: str, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(dest)]
    try:
        import scikit_build_core  # noqa: F401  (its metadata hook needs no isolated build environment)

        cmd.append("--no-build-isolation")
    except ImportError:
        pass
    cmd.append(f"{DISTRIBUTION}=={wanted}")
    log.info("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode != 0 or not found:
        raise StageError(
            f"`pip download` of the {DISTRIBUTION}=={wanted} source distribution failed (exit {proc.returncode}); "
            f"the converter ships only in it. {proc.stderr[-1500:]}"
        )
    return found[0]


def _unpack_converter(archive: Path, wanted: str, out: Path) -> None:
    prefix = f"llama_cpp_python-{wanted}/vendor/llama.cpp/"
    out.mkdir(parents=True)
    count = 0
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if not member.name.startswith(prefix) or not member.isfile():
                continue
            rel = member.name[len(prefix) :]
            if not rel.startswith(_MEMBERS):
                continue
            member.name = rel
            tar.extract(member, out, filter="data")
            count += 1
    if not (out / "convert_hf_to_gguf.py").is_file():
        raise StageError(f"{archive} has no vendor/llama.cpp/convert_hf_to_gguf.py for version {wanted}")
    digest = hashlib.sha256(Path(archive).read_bytes()).hexdigest()
    write_json(out / "lmship_source.json", {"sdist": Path(archive).name, "sha256": digest, "files": count})


def converter_architectures(converter: Path) -> set[str]:
    """The HF architectures the converter has a text-model class for (its ``TEXT_MODEL_MAP``)."""
    init = Path(converter) / "conversion" / "__init__.py"
    tree = ast.parse(init.read_text())
    for node in tree.body:
        target = getattr(node, "target", None)
        if isinstance(node, ast.AnnAssign | ast.Assign) and getattr(target, "id", None) == "TEXT_MODEL_MAP":
            return set(ast.literal_eval(node.value))
        for t in getattr(node, "targets", []):
            if getattr(t, "id", None) == "TEXT_MODEL_MAP":
                return set(ast.literal_eval(node.value))
    raise StageError(f"{init} has no TEXT_MODEL_MAP: the converter's layout changed")


def not_applicable_here(config: dict, converter: Path | None = None) -> str | None:
    """Why llama.cpp's converter cannot take this model (``config``: its config.json), or None.

    Judged by the converter's own table when ``converter`` (:func:`converter_dir`) is given, else
    by the architectures verified here (tests/test_peers.py).
    """
    archs = config.get("architectures") or []
    arch = archs[0] if archs else None
    if converter is not None:
        known = converter_architectures(converter)
        if arch not in known:
            return f"not applicable: llama.cpp's convert_hf_to_gguf.py has no model class for {arch or 'this model'}"
        return None
    return not_applicable(config)


#: config.json keys the converter reads that transformers 5 no longer writes: model_type -> {old key: new key}.
LEGACY_CONFIG_KEYS = {"gpt2": {"n_ctx": "n_positions"}}


def converter_input(hf_dir: Path, folder: Path) -> Path:
    """``hf_dir`` as the converter reads it: its files linked, config.json with the legacy keys of
    :data:`LEGACY_CONFIG_KEYS` added (e.g. GPT-2's ``n_ctx``, which transformers 5 saves as ``n_positions``)."""
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    for old, new in LEGACY_CONFIG_KEYS.get(config.get("model_type"), {}).items():
        if old not in config and new in config:
            config[old] = config[new]
    return linked_copy(hf_dir, folder, config)


def convert(
    hf_dir: Path, out_gguf: Path, *, outtype: str = "f32", converter: Path | None = None, timeout_s: float = 3600
) -> dict:
    """``convert_hf_to_gguf.py HF_DIR --outtype OUTTYPE`` into ``out_gguf``; returns its metrics.

    The converter reads :func:`converter_input`'s linked copy of ``hf_dir``.
    """
    hf_dir, out_gguf = Path(hf_dir), Path(out_gguf)
    if outtype not in CONVERTER_TYPES:
        raise StageError(f"the converter writes {CONVERTER_TYPES}, not {outtype!r}; quantise further with quantize()")
    config = json.loads((hf_dir / "config.json").read_text())
    converter = Path(converter) if converter else converter_dir()
    reason = not_applicable_here(config, converter)
    if reason:
        raise StageError(f"llama.cpp for {hf_dir}: {reason}")
    started = time.monotonic()
    with atomic_output(out_gguf) as tmp, tempfile.TemporaryDirectory(prefix="lmship-convert-") as work:
        source = converter_input(hf_dir.absolute(), Path(work) / "input")
        cmd = [sys.executable, str(converter / "convert_hf_to_gguf.py"), str(source)]
        cmd += ["--outfile", str(tmp.absolute()), "--outtype", outtype]  # it runs in the converter's folder
        log.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=converter)
        if "BPE pre-tokenizer was not recognized" in proc.stdout + proc.stderr:
            raise StageError(
                f"llama.cpp's converter ({DISTRIBUTION} {version()}) does not know the BPE pre-tokenizer of "
                f"{hf_dir}'s tokenizer (it converts only tokenizers whose pre-tokenizer hash it lists); "
                "the llama.cpp rows need a tokenizer llama.cpp supports"
            )
        if proc.returncode != 0 or not tmp.is_file():
            raise StageError(
                f"llama.cpp's convert_hf_to_gguf.py ({DISTRIBUTION} {version()}) failed on {hf_dir} "
                f"(exit {proc.returncode}): {_last_error(proc.stdout + proc.stderr)}"
            )
    return {
        "artifact": str(out_gguf),
        "tool": f"convert_hf_to_gguf.py of {DISTRIBUTION} {version()}",
        "outtype": outtype,
        "size_mb": round(size_bytes(out_gguf) / 1e6, 1),
        "seconds": round(time.monotonic() - started, 1),
    }


def _last_error(text: str, lines: int = 6) -> str:
    kept = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    return " | ".join(kept[-lines:]) or "no output"


def quantize(src_gguf: Path, out_gguf: Path, qtype: str, *, threads: int = 0) -> dict:
    """Requantise ``src_gguf`` to ``qtype`` (a key of :data:`QUANT_TYPES`) with ``llama_model_quantize``."""
    llama_cpp = _llama_cpp()
    src_gguf, out_gguf = Path(src_gguf), Path(out_gguf)
    if qtype not in QUANT_TYPES:
        raise StageError(f"unknown GGUF quantisation {qtype!r}; expected one of {sorted(QUANT_TYPES)}")
    if not src_gguf.is_file():
        raise StageError(f"GGUF file {src_gguf} does not exist")
    started = time.monotonic()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANT_TYPES[qtype]
    params.nthread = threads
    with atomic_output(out_gguf) as tmp:
        status = llama_cpp.llama_model_quantize(str(src_gguf).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0 or not tmp.is_file():
            raise StageError(f"llama_model_quantize({src_gguf.name} -> {qtype}) failed with status {status}")
    return {
        "artifact": str(out_gguf),
        "tool": f"llama_model_quantize of {DISTRIBUTION} {version()}",
        "qtype": qtype,
        "size_mb": round(size_bytes(out_gguf) / 1e6, 1),
        "seconds": round(time.monotonic() - started, 1),
    }


#: SentencePiece's word-boundary mark: a vocabulary's whitespace pieces are spelled with it on one side
#: (``'▁▁'``, the HF tokenizer of Gemma 3) and as plain spaces on the other (``'  '``, its GGUF file).
SPACE_MARK = "\u2581"


def vocabulary_differences(gguf_tokens: list[str], hf_tokens: list[str]) -> list[int]:
    """The ids whose token text differs between two vocabularies, a space and SentencePiece's mark counting as one."""
    return [
        i
        for i, (a, b) in enumerate(zip(gguf_tokens, hf_tokens, strict=True))
        if a != b and a.replace(SPACE_MARK, " ") != b.replace(SPACE_MARK, " ")
    ]


def check_vocabulary(gguf_path: Path, hf_dir: Path) -> dict:
    """Check that the GGUF file's token list gives every id the HF tokenizer's token; raise on a mismatch.

    Compared as text: the GGUF ``tokenizer.ggml.tokens`` against ``convert_ids_to_tokens`` over
    the model's whole vocabulary (:func:`vocabulary_differences`). Ids past the tokenizer's own
    vocabulary (padding rows of the embedding) are counted, not compared.
    """
    import gguf
    from transformers import AutoTokenizer

    reader = gguf.GGUFReader(str(gguf_path))
    field = reader.fields.get("tokenizer.ggml.tokens")
    if field is None:
        raise StageError(f"{gguf_path} has no tokenizer.ggml.tokens: no vocabulary to check")
    tokens = [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    n = min(len(tokens), len(tokenizer))
    hf_tokens = tokenizer.convert_ids_to_tokens(list(range(n)))
    differ = vocabulary_differences(tokens[:n], hf_tokens)
    if differ:
        shown = ", ".join(f"{i}: {tokens[i]!r} vs {hf_tokens[i]!r}" for i in differ[:5])
        raise StageError(
            f"{gguf_path} maps {len(differ)} of {n} token ids differently from the tokenizer of {hf_dir} ({shown}): "
            "its logits cannot be compared id by id"
        )
    return {"gguf_tokens": len(tokens), "hf_tokens": len(tokenizer), "compared": n, "differ": 0}


# --------------------------------------------------------------------------- running it


def gguf_metadata(gguf_path: Path) -> dict:
    """A few header fields of a GGUF file: architecture, file type, BOS handling, token count."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))

    def scalar(key: str):
        field = reader.fields.get(key)
        if field is None:
            return None
        value = field.parts[field.data[0]]
        if field.types and field.types[0] == gguf.GGUFValueType.STRING:
            return bytes(value).decode(errors="replace")
        return value.tolist()[0] if hasattr(value, "tolist") else value

    arch = scalar("general.architecture")
    return {
        "architecture": arch,
        "file_type": scalar("general.file_type"),
        "bos_token_id": scalar("tokenizer.ggml.bos_token_id"),
        "add_bos_token": scalar("tokenizer.ggml.add_bos_token"),
        "rope_freq_base": scalar(f"{arch}.rope.freq_base") if arch else None,
    }


def copy_gguf(src: Path, dst: Path) -> Path:
    """Copy a GGUF file into place atomically (e.g. the original file a model was dequantised from)."""
    with atomic_output(Path(dst)) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


def gguf(hf_dir: Path, out_dir: Path, *, quant: str, spec: dict | None = None, threads: int = 0) -> dict:
    """Write the artifact folder ``out_dir`` (``model.gguf`` + ``metrics.json``) of ``quant`` for ``hf_dir``.

    ``spec``: the model's config entry, for ``original`` (the GGUF file it was dequantised from).
    """
    from .prepare_model import fetch_gguf

    if quant not in QUANTS:
        raise StageError(f"unknown GGUF quantisation {quant!r}; expected one of {QUANTS}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "model.gguf"
    started = time.monotonic()
    if quant == "original":
        if not spec:
            raise StageError("the original GGUF file needs the model's config entry (a GGUF source)")
        fetch_gguf(spec, target)
        info = {"tool": "the checkpoint's own GGUF file", **gguf_metadata(target)}
    elif quant == "f32":
        info = convert(hf_dir, target, outtype="f32")
    else:
        with tempfile.TemporaryDirectory(prefix="lmship-gguf-", dir=out_dir.parent) as work:
            convert(hf_dir, Path(work) / "f32.gguf", outtype="f32")
            info = quantize(Path(work) / "f32.gguf", target, quant, threads=threads)
    vocabulary = check_vocabulary(target, hf_dir)
    metrics = {
        **info,
        "artifact": str(target),
        "quant": quant,
        "vocabulary": vocabulary,
        "llama_cpp_python": version(),
        # the CPU features this build of llama.cpp was compiled for and uses (GGML_NATIVE: the installing machine's)
        "system_info": system_info(),
        "size_mb": round(size_bytes(target) / 1e6, 1),
        "seconds": round(time.monotonic() - started, 1),
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics
