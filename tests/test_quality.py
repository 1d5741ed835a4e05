"""The quality yardsticks on hand-computed cases: each can fail on the bug it names."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lmship import StageError
from lmship.corpus import text_windows
from lmship.quality import (
    BROKEN,
    Agreement,
    kl_divergence,
    log_softmax,
    perplexity,
    tier,
    tier_failures,
    wilson_interval,
)

TIERS = {
    "lossless": {"min_top1_pct": 99.5, "max_mean_kld": 0.0005, "max_ppl_change_pct": 0.1},
    "8bit": {"min_top1_pct": 97.0, "max_mean_kld": 0.005, "max_ppl_change_pct": 0.5},
    "4bit": {"min_top1_pct": 90.0, "max_mean_kld": 0.05, "max_ppl_change_pct": 5.0},
}


def test_kl_divergence_by_hand():
    # P = (0.5, 0.5), Q = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3)
    p = np.log([[0.5, 0.5]])
    q = np.log([[0.25, 0.75]])
    assert kl_divergence(p, q)[0] == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-12)
    # not symmetric: the reference is the first argument
    assert kl_divergence(q, p)[0] == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-12)
    # a shift of all logits changes nothing
    assert kl_divergence(p, p + 7.0)[0] == pytest.approx(0.0, abs=1e-15)


def test_wilson_interval_by_hand():
    low, high = wilson_interval(50, 100)
    assert (low, high) == (pytest.approx(40.383, abs=1e-3), pytest.approx(59.617, abs=1e-3))
    low, high = wilson_interval(100, 100)
    assert high == pytest.approx(100.0) and low == pytest.approx(96.301, abs=1e-3)
    # 4,096 positions at 97 %: about ±0.5 points, the precision the evaluation set is sized for
    low, high = wilson_interval(round(0.97 * 4096), 4096)
    assert 0.45 < (high - low) / 2 < 0.56


def test_perplexity_by_hand_uses_the_next_token():
    # logits that put all mass on token (t + 1) % 3 at position t: perfect next-token model
    ids = np.array([[0, 1, 2, 0]])
    logits = np.full((1, 4, 3), -50.0)
    for t in range(4):
        logits[0, t, (ids[0, t] + 1) % 3] = 50.0
    assert perplexity(logits, ids) == pytest.approx(1.0, abs=1e-9)
    # the same logits scored without the shift would see every target at -100: enormous perplexity
    uniform = np.zeros((1, 4, 3))
    assert perplexity(uniform, ids) == pytest.approx(3.0, rel=1e-12)


def test_agreement_streams_samples_and_reports_text_positions():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 1, 8, 11))
    ids = rng.integers(0, 11, size=(3, 1, 8))
    is_text = [True, True, False]
    same = Agreement()
    for r, i, t in zip(ref, ids, is_text, strict=True):
        same.add(r, r.copy(), i, t)
    s = same.summarise()
    assert s["positions"] == 24 and s["text_positions"] == 16
    assert s["kld_mean"] == pytest.approx(0.0, abs=1e-12) and s["top1_pct"] == 100.0
    assert s["ppl_change_pct"] == pytest.approx(0.0, abs=1e-9)
    # perplexity over both text samples equals the hand-computed next-token perplexity
    expected = math.exp(
        -np.mean(
            [
                np.log(np.exp(r[0, :-1]) / np.exp(r[0, :-1]).sum(-1, keepdims=True))[np.arange(7), i[0, 1:]]
                for r, i in zip(ref[:2], ids[:2], strict=True)
            ]
        )
    )
    assert s["perplexity_reference"] == pytest.approx(expected, rel=1e-9)

    # flip the top-1 of exactly one text position: 15/16 agree, and the random sample is apart
    changed = ref.copy()
    pos = 3
    changed[0, 0, pos, ref[0, 0, pos].argmax()] -= 100.0
    diff = Agreement()
    for r, c, i, t in zip(ref, changed, ids, is_text, strict=True):
        diff.add(r, c, i, t)
    d = diff.summarise()
    assert d["top1_pct"] == pytest.approx(100 * 15 / 16)
    assert d["top1_random_pct"] == 100.0
    assert d["kld_max"] > 0.1 and d["kld_mean"] == pytest.approx(d["kld_max"] / 16, rel=1e-9)
    assert d["top1_ci95_low"] < d["top1_pct"] < d["top1_ci95_high"]


def _plain_figures(samples) -> dict:
    """The figures of Agreement written as the plain formulas, one fresh array per step (the oracle)."""
    kld, top1, text, nll_ref, nll, cosine, abs_max, abs_sum, values = [], [], [], [], [], [], 0.0, 0.0, 0
    for reference, logits, ids, is_text in samples:
        ref2 = np.asarray(reference, dtype=np.float64).reshape(-1, reference.shape[-1])
        cand2 = np.nan_to_num(np.asarray(logits, dtype=np.float64), nan=0.0, posinf=1e4, neginf=-1e4)
        cand2 = cand2.reshape(ref2.shape)
        ref_lp, cand_lp = log_softmax(ref2), log_softmax(cand2)
        kld.append(np.maximum((np.exp(ref_lp) * (ref_lp - cand_lp)).sum(-1), 0.0))
        top1.append(ref2.argmax(-1) == cand2.argmax(-1))
        text.append(np.full(len(ref2), is_text))
        abs_max = max(abs_max, float(np.abs(ref2 - cand2).max()))
        abs_sum += float(np.abs(ref2 - cand2).sum())
        values += ref2.size
        norms = np.linalg.norm(ref2, axis=-1) * np.linalg.norm(cand2, axis=-1)
        cosine.append(np.where(norms > 0, (ref2 * cand2).sum(-1) / np.maximum(norms, 1e-300), 1.0))
        if is_text:
            target, rows = np.asarray(ids).reshape(-1)[1:], np.arange(len(ref2) - 1)
            nll_ref.append(-ref_lp[rows, target])
            nll.append(-cand_lp[rows, target])
    kld, top1, text, cosine = map(np.concatenate, (kld, top1, text, cosine))
    ppl_ref, ppl = float(np.exp(np.concatenate(nll_ref).mean())), float(np.exp(np.concatenate(nll).mean()))
    n = int(text.sum())
    return {
        "kld_mean": float(kld[text].mean()),
        "kld_p99": float(np.percentile(kld[text], 99)),
        "kld_max": float(kld[text].max()),
        "kld_mean_random": float(kld[~text].mean()),
        "top1_pct": 100.0 * int(top1[text].sum()) / n,
        "top1_agreement_pct": float(100.0 * top1.mean()),
        "max_abs_diff": abs_max,
        "mean_abs_diff": abs_sum / values,
        "cosine_similarity": float(cosine.mean()),
        "min_cosine_similarity": float(cosine.min()),
        "perplexity_reference": ppl_ref,
        "perplexity": ppl,
    }


def test_agreement_gives_the_plain_formulas_figures_bit_for_bit():
    """Agreement reuses its work arrays from sample to sample: the figures must be the plain formulas', exactly.

    Float32 logits of a realistic size, samples of two shapes (the arrays are remade), a
    non-finite logit, text and random samples; a reused array not fully overwritten, or an
    operation done in another order, changes some figure in its last bits.
    """
    rng = np.random.default_rng(1)
    samples = []
    for k, seq in enumerate((13, 13, 7, 13)):
        reference = (3 * rng.standard_normal((1, seq, 4999))).astype(np.float32)
        logits = reference + rng.normal(0, 0.2, reference.shape).astype(np.float32)
        if k == 1:
            logits[0, 2, 7], logits[0, 4, 1] = np.nan, np.inf
        samples.append((reference, logits, rng.integers(0, 4999, (1, seq)), k != 3))
    agreement = Agreement()
    for sample in samples:
        agreement.add(*sample)
    got = agreement.summarise()
    assert got["finite"] is False
    expected = _plain_figures(samples)
    assert {key: got[key] for key in expected} == expected


def test_nonfinite_logits_are_flagged():
    a = Agreement()
    bad = np.zeros((1, 4, 5))
    bad[0, 1, 2] = np.nan
    a.add(np.zeros((1, 4, 5)), bad, np.zeros((1, 4), dtype=int), True)
    s = a.summarise()
    assert s["finite"] is False
    assert "non-finite logits" in tier_failures(s, TIERS["4bit"])


def _summary(top1=100.0, kld=0.0, ppl=0.0):
    return {"finite": True, "top1_pct": top1, "kld_mean": kld, "ppl_change_pct": ppl}


@pytest.mark.parametrize(
    ("summary", "expected", "missed_on"),
    [
        (_summary(), "lossless", None),
        (_summary(top1=99.4), "8bit", "top-1"),  # top-1 alone drops it a tier
        (_summary(kld=0.0006), "8bit", "mean KLD"),  # KLD alone
        (_summary(ppl=-0.11), "8bit", "perplexity"),  # |Δppl| alone, a drop counts too
        (_summary(top1=96.0, kld=0.001, ppl=0.2), "4bit", "top-1"),
        (_summary(top1=95.0, kld=0.06, ppl=1.0), BROKEN, "mean KLD"),
    ],
)
def test_each_tier_limit_fires_on_its_own(summary, expected, missed_on):
    name, missed = tier(summary, TIERS)
    assert name == expected
    if missed_on:
        assert any(missed_on in reason for reasons in missed.values() for reason in reasons)


def test_text_windows_start_at_each_article():
    docs = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11, 12]]
    windows, used = text_windows(docs, seq_len=4, count=2)
    assert windows == [[4, 5, 6, 7], [9, 10, 11, 12]] and used == [1, 2]
    with pytest.raises(StageError, match="only 2 articles of at least 4 tokens, 3 text windows asked"):
        text_windows(docs, seq_len=4, count=3)
