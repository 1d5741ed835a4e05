"""Synthetic inputs of the report stages, written as the timing, evaluate and generation stages write them.

Timing rows: one per timed pass, the round columns and ``timing.FIELDS`` plus the status
columns; a failed backend is one row with status ``failed`` and no latency. Accuracy JSONs:
the figures with ``"status": "ok"``, or the failure record. Generation rows likewise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lmship.backends import BACKENDS
from lmship.files import write_json
from lmship.generation import FIELDS as GENERATION_FIELDS
from lmship.rounds import ROUND_FIELDS
from lmship.timing import FIELDS as TIMING_FIELDS

STATUS_FIELDS = ["status", "failed_at", "reason", "log"]
#: What the generation stage adds to each row from comparing it with PyTorch's text.
SAME_TEXT_FIELDS = ["identical", "first_divergence", "matched_pct"]
TIERS = ["lossless", "8-bit", "4-bit"]
TIER_LIMITS = {
    "lossless": {"min_top1_pct": 99.5, "max_mean_kld": 0.0005, "max_ppl_change_pct": 0.1},
    "8-bit": {"min_top1_pct": 97.0, "max_mean_kld": 0.005, "max_ppl_change_pct": 0.5},
    "4-bit": {"min_top1_pct": 90.0, "max_mean_kld": 0.05, "max_ppl_change_pct": 5.0},
}
OOM = "killed for memory (SIGKILL) at 15012 MB peak RSS, declared mem_mb 10000"


@dataclass(frozen=True)
class Timed:
    """A backend's timing at one thread count: median, spread of its rounds' medians (%), file size."""

    median_ms: float
    spread_pct: float = 1.0
    size_mb: float = 100.0


@dataclass(frozen=True)
class Failure:
    failed_at: str
    reason: str

    def log(self, model: str, backend: str) -> str:
        return f"logs/{self.failed_at}/{model}_{backend}.log"


def write_timing(
    path: Path,
    backends: dict[str, Timed | Failure],
    *,
    model: str = "m",
    seq: int = 16,
    threads: int = 1,
    run_id: str = "run-a",
    node: str = "n1",
    rounds: int = 3,
    repeats: int = 3,
) -> Path:
    """One timing CSV: every ``Timed`` backend in every round (round medians spread by its spread_pct), every
    ``Failure`` as one failed row. ``path`` should end in ``seq<seq>/timing/t<threads>.csv``, as the workflow's."""
    rows = []
    base = {"run_id": run_id, "node": node, "model": model, "threads": threads, "batch": 1, "seq_len": seq}
    base |= {"runtime_version": "1", "threads_in_effect": threads, "load_s": 0.1, "peak_rss_mb": 1.0}
    base |= {"cpu_model": "Test CPU", "cpu_flags": "avx2", "started_utc": "2025-01-01T00:00:00Z"}
    for backend, t in backends.items():
        if isinstance(t, Failure):  # as rounds.failed_row writes it: no sequence length, batch or figures
            rows.append(
                {"run_id": run_id, "round": 0, "node": node, "model": model, "threads": threads}
                | {"backend": backend, "precision": "fp32", "runtime": "x", "status": "failed"}
                | {"failed_at": t.failed_at, "reason": t.reason, "log": t.log(model, backend)}
            )
            continue
        factors = (
            [1.0 + t.spread_pct / 200.0 * (2 * r / (rounds - 1) - 1) for r in range(rounds)] if rounds > 1 else [1]
        )
        for r, factor in enumerate(factors):
            for i in range(repeats):
                rows.append(
                    base
                    | {"backend": backend, "precision": "fp32", "runtime": "x", "round": r, "repeat": i}
                    | {"latency_ms": t.median_ms * factor, "artifact_mb": t.size_mb, "status": "ok"}
                    | {"failed_at": "", "reason": "", "log": ""}
                )
    columns = [*ROUND_FIELDS, *TIMING_FIELDS, *STATUS_FIELDS]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def write_accuracy(
    folder: Path,
    backend: str,
    quality: tuple[str, float, float] | Failure,
    *,
    model: str = "m",
    seq: int = 16,
) -> Path:
    """An accuracy JSON: ``quality`` = (tier, mean KLD, top-1 %) with status ok, or a failure record."""
    record = {"model": model, "seq_len": seq, "backend": backend, "precision": "fp32"}
    if isinstance(quality, Failure):
        record |= {"status": "failed", "failed_at": quality.failed_at, "reason": quality.reason, "tier": "failed"}
        record["log"] = quality.log(model, backend)
    else:
        tier, kld, top1 = quality
        record |= {"status": "ok", "tier": tier, "kld_mean": kld, "kld_p99": kld * 10, "kld_max": kld * 50}
        record |= {"top1_pct": top1, "top1_ci95_low": max(top1 - 0.5, 0.0), "top1_ci95_high": min(top1 + 0.2, 100)}
        record |= {"perplexity": 10.0, "ppl_change_pct": 0.01, "top1_agreement_pct": top1, "max_abs_diff": 0.1}
        record["tier_missed"] = {} if tier == "lossless" else {"lossless": [f"mean KLD {kld:.2e} > 0.0005"]}
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(folder / f"{model}_{seq}_{backend}.json", record)


def write_reference(folder: Path, *, model: str = "m") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(folder / f"{model}_reference.json", {"perplexity_text": 10.0})


@dataclass(frozen=True)
class Generated:
    """A backend's generation at one thread count: ms per decoded token, time to first token, same text."""

    decode_ms: float
    ttft_ms: float = 100.0
    identical: bool = True


def write_generation(
    path: Path,
    backends: dict[str, Generated | Failure],
    *,
    model: str = "m",
    threads: int = 1,
    prompts: int = 2,
    rounds: int = 2,
    new_tokens: int = 4,
) -> Path:
    """One generation CSV: a row per generated sequence and round; a ``Failure`` as one failed row."""
    rows = []
    base = {"run_id": "gen-a", "node": "n1", "model": model, "threads": threads, "precision": "fp32"}
    for backend, g in backends.items():
        runtime = BACKENDS[backend].runtime if backend in BACKENDS else "onnxruntime"
        if isinstance(g, Failure):
            rows.append(
                base
                | {"backend": backend, "runtime": runtime, "status": "failed", "failed_at": g.failed_at}
                | {"reason": g.reason, "log": g.log(model, backend)}
            )
            continue
        for r in range(rounds):
            for k in range(prompts):
                tokens = " ".join(str(10 + i) for i in range(new_tokens))
                rows.append(
                    base
                    | {"backend": backend, "runtime": runtime, "round": r, "prompt": k, "prompt_tokens": 8}
                    | {"new_tokens": new_tokens, "prompt_via": "prefill graph", "ttft_ms": g.ttft_ms}
                    | {"decode_ms_median": g.decode_ms * (1 + 0.002 * r), "decode_ms_p90": g.decode_ms * 1.05}
                    | {"prompt_tok_s": 8 / (g.ttft_ms / 1000), "generated_tok_s": 1000 / g.decode_ms}
                    | {"load_s": 0.2, "peak_rss_mb": 50.0, "tokens": tokens, "identical": g.identical}
                    | {"first_divergence": "" if g.identical else "2", "matched_pct": 100.0 if g.identical else 50.0}
                    | {"status": "ok", "failed_at": "", "reason": "", "log": ""}
                )
    columns = [*ROUND_FIELDS, *GENERATION_FIELDS, *SAME_TEXT_FIELDS, *STATUS_FIELDS]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


#: A realistic race: the README's 2-core figures (ms and round spread % at 1 and 2 threads, MB, tier, top-1 %,
#: mean KLD), with its crowded lossless cluster (seven formats at identical logits).
README_RACE = {
    "pytorch": (451.8, 6, 287.8, 26, 542, "reference", 100.0, 0.0),
    "pytorch_int8": (147.4, 7, 91.5, 45, 248, "broken", 36.46, 1.5),
    "pytorch_bf16": (264.6, 2, 217.2, 28, 542, "8-bit", 97.05, 6.7e-4),
    "onnx": (358.9, 3, 213.9, 13, 544, "lossless", 100.0, 1.2e-11),
    "onnx_simplified": (353.5, 4, 196.6, 10, 652, "lossless", 100.0, 1.2e-11),
    "onnx_int8_dynamic": (124.8, 7, 77.8, 6, 164, "broken", 55.43, 0.63),
    "onnx_int8_block": (286.7, 2, 179.5, 8, 269, "4-bit", 95.21, 5.1e-3),
    "onnx_q4_exact": (388.6, 4, 243.3, 14, 227, "lossless", 100.0, 7.2e-11),
    "tflite_fp32": (352.3, 4, 190.8, 12, 539, "lossless", 100.0, 3.5e-11),
    "tflite_fp16": (348.8, 4, 192.0, 6, 270, "lossless", 99.94, 2.2e-6),
    "tflite_int8": (114.7, 6, 63.8, 36, 166, "broken", 88.61, 3.0e-2),
    "openvino": (335.2, 1, 199.9, 13, 540, "lossless", 100.0, 3.1e-11),
    "openvino_bf16": (183.7, 2, 102.3, 19, 540, "8-bit", 98.09, 9.4e-4),
    "openvino_int8_asym": (161.8, 2, 89.4, 32, 138, "4-bit", 93.59, 8.2e-3),
    "openvino_int8_asym_fp32_head": (196.1, 2, 106.2, 27, 222, "4-bit", 94.75, 6.3e-3),
    "openvino_int4_asym_g32": (162.5, 1, 88.9, 29, 92, "broken", 65.59, 0.37),
    "openvino_int4_asym_g32_awq": (165.0, 3, 89.3, 31, 92, "broken", 75.51, 0.18),
    "openvino_q4_exact": (365.3, 3, 188.3, 1, 117, "lossless", 100.0, 3.0e-11),
}
SMOLLM2_CONFIG = {"hidden_size": 576, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64}
SMOLLM2_CONFIG |= {"intermediate_size": 1536, "num_hidden_layers": 30, "vocab_size": 49152}
NOT_APPLICABLE_TO_TINY = {
    "onnx_q4_exact": "not applicable: ORT 4-bit exact grid needs weights dequantised from a GGUF file "
    "(source pypi_gguf or gguf), this model's source is random",
    "openvino_q4_exact": "not applicable: OpenVINO 4-bit exact grid needs weights dequantised from a GGUF file "
    "(source pypi_gguf or gguf), this model's source is random",
}


def readme_like_summary(folder: Path, *, failures: bool = True) -> Path:
    """``summary.csv`` of two models through the summary stage: the README's race (with, if ``failures``, a
    conversion killed for memory, a timing crash at 2 threads and a failed evaluation), and a model whose every
    converted format failed, with two formats not applicable."""
    from lmship.summary import summary

    folder.mkdir(parents=True, exist_ok=True)
    oom = Failure("tflite", OOM)
    crash = Failure("timing", "exit -11 (SIGSEGV) in round 2 of 3")
    evaluate = Failure("evaluate", "killed for memory (SIGKILL) at 6100 MB peak RSS, declared mem_mb 5000")
    timing_csvs, accuracy = [], []
    for t, (ms_col, spread_col) in {1: (0, 1), 2: (2, 3)}.items():
        race: dict[str, Timed | Failure] = {b: Timed(f[ms_col], f[spread_col], f[4]) for b, f in README_RACE.items()}
        if failures:
            race["tflite_int8"] = oom
            if t == 2:
                race["onnx_simplified"] = crash
        timing_csvs.append(
            write_timing(
                folder / "smollm2-135m" / "seq128" / "timing" / f"t{t}.csv",
                race,
                model="smollm2-135m",
                seq=128,
                threads=t,
            )
        )
        tiny: dict[str, Timed | Failure] = {"pytorch": Timed(2.0 + t, 2, 3)}
        tiny |= {b: oom for b in README_RACE if b not in ("pytorch", *NOT_APPLICABLE_TO_TINY)}
        timing_csvs.append(
            write_timing(folder / "tiny" / "seq16" / "timing" / f"t{t}.csv", tiny, model="tiny", seq=16, threads=t)
        )
    for b, f in README_RACE.items():
        if b == "pytorch":
            continue
        quality = oom if failures and b == "tflite_int8" else (f[5], f[7], f[6])
        quality = evaluate if failures and b == "openvino_int4_asym_g32_awq" else quality
        accuracy.append(write_accuracy(folder / "accuracy", b, quality, model="smollm2-135m", seq=128))
        if b not in NOT_APPLICABLE_TO_TINY:
            accuracy.append(write_accuracy(folder / "accuracy", b, oom, model="tiny", seq=16))
    machine = [
        write_json(
            folder / f"machine_t{t}.json",
            {"threads": t, "fp32_gflops": 113.5 * t, "bf16_gflops": 214.9 * t} | {"int8_gops": 441.0 * t},
        )
        for t in (1, 2)
    ]
    hf = folder / "hf"
    hf.mkdir(exist_ok=True)
    write_json(hf / "config.json", SMOLLM2_CONFIG)
    out = folder / "summary.csv"
    summary(
        timing_csvs,
        accuracy,
        {("smollm2-135m", 128): write_reference(folder, model="smollm2-135m"), ("tiny", 16): write_reference(folder)},
        machine,
        {"smollm2-135m": hf},
        out,
        folder / "summary.md",
        tiers=TIERS,
        max_round_spread_pct=10,
        max_p90_ratio=1.5,
        skipped={"tiny": NOT_APPLICABLE_TO_TINY},
    )
    return out


#: The README's generation figures: TTFT ms and decode ms/token at 1 and 2 threads, tier, share of sequences with
#: PyTorch's text, share of the roofline at 1 thread.
README_GENERATION = {
    "tflite_int8": (134, 97, 9.9, 9.8, "broken", 0, 0.54),
    "onnx_int8_block": (231, 162, 12.2, 10.3, "4-bit", 25, 0.70),
    "openvino_int4_asym_g32": (136, 77, 12.6, 12.0, "broken", 0, 0.25),
    "onnx_int8_dynamic": (104, 119, 12.9, 11.8, "broken", 0, 0.41),
    "openvino_int8_asym": (137, 79, 14.0, 13.3, "4-bit", 0, 0.32),
    "openvino_int8_asym_fp32_head": (137, 79, 16.4, 15.5, "4-bit", 0, 0.43),
    "openvino_q4_exact": (293, 155, 18.0, 14.4, "lossless", 100, 0.22),
    "onnx_q4_exact": (318, 206, 20.4, 14.3, "lossless", 100, 0.24),
    "tflite_fp32": (296, 170, 21.6, 20.2, "lossless", 100, 0.77),
    "openvino_bf16": (153, 86, 22.7, 18.5, "8-bit", 0, 0.73),
    "tflite_fp16": (295, 175, 23.5, 20.7, "lossless", 100, 0.36),
    "onnx": (292, 193, 28.0, 20.1, "lossless", 100, 0.72),
    "onnx_simplified": (294, 213, 28.1, 19.7, "lossless", 100, 0.59),
    "openvino": (279, 161, 29.4, 24.4, "lossless", 100, 0.57),
    "pytorch": (446, 278, 54.7, 56.0, "reference", 100, 0.30),
}


def readme_like_generation(folder: Path) -> Path:
    """A ``generation.csv`` as the generation summary writes it: the README's figures with a lossless format
    whose text differs and a conversion killed for memory, and a model whose every converted format failed and
    two formats do not apply."""
    from lmship.backends import BACKENDS
    from lmship.generation_summary import COLUMNS

    folder.mkdir(parents=True, exist_ok=True)
    failures = {"onnx_q4_exact": Failure("generation", "text differs from PyTorch's at token 7 of prompt 2")}
    failures["tflite_int8"] = Failure("tflite", OOM)
    rows = []
    for model in ("smollm2-135m", "tiny"):
        for t in (1, 2):
            ref = 1000 / README_GENERATION["pytorch"][2 + t - 1]
            for backend, (ttft1, ttft2, dec1, dec2, tier, same, roof) in README_GENERATION.items():
                row = {"model": model, "backend": backend, "label": BACKENDS[backend].label, "threads": t}
                failure = failures.get(backend) if model == "smollm2-135m" else Failure("export_onnx", OOM)
                if backend in NOT_APPLICABLE_TO_TINY and model == "tiny":
                    rows.append(row | {"status": "not applicable", "tier": "not applicable"}
                                | {"reason": NOT_APPLICABLE_TO_TINY[backend]})  # fmt: skip
                    continue
                if failure and backend != "pytorch":
                    rows.append(row | {"status": "failed", "tier": "failed" if model == "tiny" else tier}
                                | {"failed_at": failure.failed_at, "reason": failure.reason}
                                | {"log": failure.log(model, backend)})  # fmt: skip
                    continue
                decode = dec1 if t == 1 else dec2
                rows.append(
                    row
                    | {"status": "ok", "tier": tier, "prompt_via": "prefill graph", "sequences": 12, "rounds": 3}
                    | {"ttft_ms": ttft1 if t == 1 else ttft2, "decode_ms_median": decode, "decode_ms_p90": decode * 1.1}
                    | {"decode_spread_pct": 12 if backend == "onnx" else 3, "unstable": backend == "onnx"}
                    | {"generated_tok_s": 1000 / decode, "vs_pytorch": 1000 / decode / ref, "same_text_pct": same}
                    | {"roofline_share": roof * (0.9 if t == 2 else 1.0), "bandwidth_gb_s": 33.1 * t}
                )
    out = folder / "generation.csv"
    pd.DataFrame(rows, columns=COLUMNS).to_csv(out, index=False)
    return out
