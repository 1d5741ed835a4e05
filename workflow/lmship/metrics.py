"""Agreement of a backend's logits with the PyTorch reference, and perplexity."""

from __future__ import annotations

import numpy as np


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def perplexity(logits: np.ndarray, input_ids: np.ndarray, is_text: np.ndarray) -> float | None:
    """Next-token perplexity over the text samples.

    ``logits`` is ``[n, batch, seq, vocab]`` and ``input_ids`` ``[n, batch, seq]``;
    position ``t`` predicts token ``t + 1``. Random-id samples are skipped.
    Returns ``None`` when there is no text sample.
    """
    nll, count = 0.0, 0
    for sample_logits, ids, text in zip(logits, input_ids, is_text, strict=True):
        if not text:
            continue
        logp = _log_softmax(sample_logits[:, :-1, :])
        target = ids[:, 1:]
        picked = np.take_along_axis(logp, target[..., None], axis=-1)[..., 0]
        nll -= float(picked.sum())
        count += target.size
    if count == 0:
        return None
    return float(np.exp(nll / count))


def compare_logits(reference: np.ndarray, candidate: np.ndarray, is_text: np.ndarray | None = None) -> dict[str, float]:
    """Max / mean absolute difference, cosine similarity and top-1 agreement (%).

    Both arrays are ``[..., vocab]`` of the same shape. Cosine similarity is the
    mean over positions of the cosine between the two logit vectors. With
    ``is_text`` (per first axis), top-1 agreement on the text samples alone is
    reported too.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"logits shape {candidate.shape} differs from the reference {reference.shape}")
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    diff = np.abs(ref - cand)
    dot = (ref * cand).sum(-1)
    norms = np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1)
    cosine = np.where(norms > 0, dot / np.maximum(norms, 1e-300), 1.0)
    agree = ref.argmax(-1) == cand.argmax(-1)
    out = {
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
        "cosine_similarity": float(cosine.mean()),
        "min_cosine_similarity": float(cosine.min()),
        "top1_agreement_pct": float(100.0 * agree.mean()),
        "finite": bool(np.isfinite(cand).all()),
    }
    if is_text is not None and np.any(is_text):
        out["top1_agreement_text_pct"] = float(100.0 * agree[np.asarray(is_text)].mean())
    return out
