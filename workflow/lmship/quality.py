"""Quality of a backend's logits against the PyTorch reference, as the field measures it.

Streamed one evaluation sample at a time (``Agreement.add``), so 4,096+ positions
of a 49,152-token vocabulary never sit in memory at once. Per position it keeps:

- the KL divergence KL(P_ref || P_backend) in nats (llama.cpp's ``--kl-divergence``);
- whether the top-1 token agrees;
- the next-token log-likelihood of both models (text samples only: perplexity);
- absolute logit difference, also over the reference logits' standard deviation (a scale-free
  bound for the fp32 conversion gates), and cosine similarity.

``summarise`` turns those into the figures a user reads: mean / p99 / max KLD,
top-1 agreement with its 95 % Wilson interval, perplexity and its change, all on
the text positions (the random-id samples are reported apart), and ``tier``
places the backend in the first quality tier whose limits it meets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

#: z for a two-sided 95 % interval.
Z95 = 1.959963984540054

#: Tier name given when no configured tier's limits are met.
BROKEN = "broken"


def log_softmax(x: np.ndarray) -> np.ndarray:
    """log-softmax over the last axis, in float64."""
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    shifted = x - m
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _log_softmax_into(x: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """:func:`log_softmax` of float64 ``x`` written into ``out``, the same operations in the same order."""
    np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    np.exp(out, out=scratch)
    np.subtract(out, np.log(scratch.sum(axis=-1, keepdims=True)), out=out)
    return out


def _row_norms(x: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``np.linalg.norm(x, axis=-1)`` of real ``x`` as numpy computes it (sqrt of the sum of x*x)."""
    np.multiply(x, x, out=scratch)
    return np.sqrt(np.add.reduce(scratch, axis=-1))


def kl_divergence(reference_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """KL(P_ref || P) in nats for every position (``[..., vocab]`` -> ``[...]``)."""
    ref = log_softmax(reference_logits)
    cand = log_softmax(logits)
    kld = (np.exp(ref) * (ref - cand)).sum(axis=-1)
    return np.maximum(kld, 0.0)  # rounding can give -1e-17 for identical rows


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion, in percent (exact 0 and 100 stay inside)."""
    if n <= 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half))


@dataclass
class Agreement:
    """Per-position statistics of one backend against the reference, gathered sample by sample."""

    kld: list[np.ndarray] = field(default_factory=list)
    top1: list[np.ndarray] = field(default_factory=list)
    text: list[np.ndarray] = field(default_factory=list)
    nll_ref: list[np.ndarray] = field(default_factory=list)
    nll: list[np.ndarray] = field(default_factory=list)
    cosine: list[np.ndarray] = field(default_factory=list)
    max_abs_diff: float = 0.0
    abs_diff_sum: float = 0.0
    values: int = 0
    ref_sum: float = 0.0
    ref_sum_sq: float = 0.0
    finite: bool = True
    _arrays: list[np.ndarray] | None = field(default=None, repr=False, compare=False)

    def add(self, reference_logits: np.ndarray, logits: np.ndarray, input_ids: np.ndarray, is_text: bool) -> None:
        """One sample: logits ``[batch, seq, vocab]`` of both models and its ``[batch, seq]`` ids.

        The float64 work arrays are allocated once and reused from sample to sample
        (``out=``): the same numpy operations on the same arrays as the plain formulas
        (:func:`log_softmax`, :func:`kl_divergence`, ``np.linalg.norm``), so the same
        figures bit for bit, without faulting in some 30 fresh arrays of a sample's size each time.
        """
        reference_logits = np.asarray(reference_logits)
        logits = np.asarray(logits)
        if reference_logits.shape != logits.shape:
            raise ValueError(f"logits shape {logits.shape} differs from the reference {reference_logits.shape}")
        vocab = logits.shape[-1]
        ref2, cand2, ref_lp, cand_lp, tmp, tmp2 = self._work((logits.size // vocab, vocab))
        np.copyto(ref2, reference_logits.reshape(-1, vocab), casting="unsafe")
        np.copyto(cand2, logits.reshape(-1, vocab), casting="unsafe")
        if not np.isfinite(cand2).all():
            self.finite = False
            np.nan_to_num(cand2, copy=False, nan=0.0, posinf=1e4, neginf=-1e4)
        _log_softmax_into(ref2, ref_lp, tmp)
        _log_softmax_into(cand2, cand_lp, tmp)
        np.exp(ref_lp, out=tmp)
        np.subtract(ref_lp, cand_lp, out=tmp2)
        np.multiply(tmp, tmp2, out=tmp)
        self.kld.append(np.maximum(tmp.sum(-1), 0.0))
        self.top1.append(ref2.argmax(-1) == cand2.argmax(-1))
        self.text.append(np.full(ref2.shape[0], bool(is_text)))
        self.ref_sum += float(ref2.sum())
        np.multiply(ref2, ref2, out=tmp)
        self.ref_sum_sq += float(tmp.sum())
        np.subtract(ref2, cand2, out=tmp)
        np.abs(tmp, out=tmp)
        self.max_abs_diff = max(self.max_abs_diff, float(tmp.max()))
        self.abs_diff_sum += float(tmp.sum())
        self.values += tmp.size
        np.multiply(ref2, cand2, out=tmp)
        dot = tmp.sum(-1)
        norms = _row_norms(ref2, tmp) * _row_norms(cand2, tmp)
        self.cosine.append(np.where(norms > 0, dot / np.maximum(norms, 1e-300), 1.0))
        if is_text:
            # position t predicts token t + 1: the last position of a window has no target
            seq = logits.shape[-2]
            ids = np.asarray(input_ids).reshape(-1, seq)
            target = ids[:, 1:].reshape(-1)
            rows = ref_lp.reshape(ids.shape[0], seq, vocab)[:, :-1, :].reshape(-1, vocab)
            cand_rows = cand_lp.reshape(ids.shape[0], seq, vocab)[:, :-1, :].reshape(-1, vocab)
            idx = np.arange(target.size)
            self.nll_ref.append(-rows[idx, target])
            self.nll.append(-cand_rows[idx, target])

    def _work(self, shape: tuple[int, int]) -> list[np.ndarray]:
        """Six float64 arrays of ``shape``, reused while the shape stays the same."""
        if self._arrays is None or self._arrays[0].shape != shape:
            self._arrays = [np.empty(shape, np.float64) for _ in range(6)]
        return self._arrays

    def summarise(self) -> dict:
        """The figures of the evaluation (see the module docstring); KLD in nats, shares in %."""
        if not self.kld:
            raise ValueError("no sample was added")
        kld = np.concatenate(self.kld)
        top1 = np.concatenate(self.top1)
        text = np.concatenate(self.text)
        cosine = np.concatenate(self.cosine)
        mean = self.ref_sum / max(self.values, 1)
        scale = math.sqrt(max(self.ref_sum_sq / max(self.values, 1) - mean * mean, 0.0))
        out: dict = {
            "positions": int(top1.size),
            "text_positions": int(text.sum()),
            "finite": self.finite,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.abs_diff_sum / max(self.values, 1),
            "reference_std": scale,
            "max_rel_diff": self.max_abs_diff / scale if scale > 0 else math.inf,
            "cosine_similarity": float(cosine.mean()),
            "min_cosine_similarity": float(cosine.min()),
            "top1_agreement_pct": float(100.0 * top1.mean()),
        }
        # the yardsticks a tier is judged on: text positions when there are any
        judged = text if text.any() else np.ones_like(text)
        out["judged_on"] = "text" if text.any() else "all"
        k = kld[judged]
        agree = int(top1[judged].sum())
        n = int(judged.sum())
        low, high = wilson_interval(agree, n)
        out.update(
            {
                "kld_mean": float(k.mean()),
                "kld_p99": float(np.percentile(k, 99)),
                "kld_max": float(k.max()),
                "top1_pct": 100.0 * agree / n,
                "top1_ci95_low": low,
                "top1_ci95_high": high,
            }
        )
        if (~text).any():
            out["kld_mean_random"] = float(kld[~text].mean())
            out["top1_random_pct"] = float(100.0 * top1[~text].mean())
        if self.nll:
            nll_ref = np.concatenate(self.nll_ref)
            nll = np.concatenate(self.nll)
            out["perplexity_reference"] = float(np.exp(nll_ref.mean()))
            out["perplexity"] = float(np.exp(nll.mean()))
            out["ppl_change_pct"] = 100.0 * (out["perplexity"] / out["perplexity_reference"] - 1.0)
        else:
            out["perplexity_reference"] = out["perplexity"] = out["ppl_change_pct"] = None
        return out


def perplexity(logits: np.ndarray, input_ids: np.ndarray) -> float:
    """Next-token perplexity of ``[batch, seq, vocab]`` logits on their own ``[batch, seq]`` ids."""
    lp = log_softmax(logits)[..., :-1, :]
    target = np.asarray(input_ids)[..., 1:]
    picked = np.take_along_axis(lp, target[..., None], axis=-1)[..., 0]
    return float(np.exp(-picked.mean()))


def compare_logits(reference: list[np.ndarray], logits: list[np.ndarray]) -> dict:
    """Top-1 agreement, largest logit difference (absolute and over the reference logits' standard
    deviation) and mean KL divergence of ``logits`` against ``reference``, position by position:
    the figures every generation-graph gate judges (:func:`logit_failures`)."""
    ref = np.stack(reference).astype(np.float64).reshape(len(reference), -1)
    got = np.stack(logits).astype(np.float64).reshape(len(logits), -1)
    scale = float(ref.std())
    if not np.isfinite(got).all():
        return {
            "positions": len(ref),
            "finite": False,
            "top1_agreement_pct": 0.0,
            "max_abs_diff": float("inf"),
            "reference_std": scale,
            "max_rel_diff": float("inf"),
            "kld_mean": float("inf"),
        }
    max_abs = float(np.abs(ref - got).max())
    return {
        "positions": len(ref),
        "finite": True,
        "top1_agreement_pct": round(100.0 * float((ref.argmax(-1) == got.argmax(-1)).mean()), 2),
        "max_abs_diff": max_abs,
        "reference_std": scale,
        "max_rel_diff": max_abs / scale if scale > 0 else float("inf"),
        "kld_mean": float(kl_divergence(ref, got).mean()),
    }


def logit_failures(
    metrics: dict,
    *,
    max_abs_diff: float | None = None,
    max_rel_diff: float | None = None,
    max_mean_kld: float | None = None,
) -> list[str]:
    """Which logit bounds ``metrics`` exceed, each with its figure and bound (empty: none)."""
    failures = []
    if max_abs_diff is not None and metrics["max_abs_diff"] > max_abs_diff:
        failures.append(f"max |Δlogit| {metrics['max_abs_diff']:.3g} > {max_abs_diff:g}")
    if max_rel_diff is not None and metrics["max_rel_diff"] > max_rel_diff:
        failures.append(f"max |Δlogit| / std(reference logits) {metrics['max_rel_diff']:.3g} > {max_rel_diff:g}")
    if max_mean_kld is not None and metrics["kld_mean"] > max_mean_kld:
        failures.append(f"mean KL divergence {metrics['kld_mean']:.3g} > {max_mean_kld:g} nats")
    return failures


def figures(metrics: dict) -> str:
    """The logit figures of a gate's ``metrics`` in one phrase (for its error message)."""
    text = (
        f"top-1 {metrics['top1_agreement_pct']:.2f}%, max |Δlogit| {metrics['max_abs_diff']:.3g} "
        f"(std of PyTorch's logits {metrics.get('reference_std', float('nan')):.3g})"
    )
    if "kld_mean" in metrics:
        text += f", mean KL {metrics['kld_mean']:.3g} nats"
    return text


def tier_failures(summary: dict, limits: dict) -> list[str]:
    """Why ``summary`` misses a tier's ``limits`` (empty when it meets them)."""
    failures = []
    if not summary.get("finite", True):
        failures.append("non-finite logits")
    if summary["top1_pct"] < limits["min_top1_pct"]:
        failures.append(f"top-1 {summary['top1_pct']:.2f}% < {limits['min_top1_pct']}%")
    if summary["kld_mean"] > limits["max_mean_kld"]:
        failures.append(f"mean KLD {summary['kld_mean']:.2e} > {limits['max_mean_kld']:g}")
    change = summary.get("ppl_change_pct")
    if change is not None and abs(change) > limits["max_ppl_change_pct"]:
        failures.append(f"perplexity {change:+.2f}% beyond ±{limits['max_ppl_change_pct']}%")
    return failures


def tier(summary: dict, tiers: dict[str, dict]) -> tuple[str, dict[str, list[str]]]:
    """The first tier (in config order, strictest first) whose limits ``summary`` meets.

    Returns the tier's name, or :data:`BROKEN`, and for every stricter tier the
    reasons it was missed.
    """
    missed: dict[str, list[str]] = {}
    for name, limits in tiers.items():
        failures = tier_failures(summary, limits)
        if not failures:
            return name, missed
        missed[name] = failures
    return BROKEN, missed
