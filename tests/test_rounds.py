"""Interleaved rounds, the noise flag and ties, on synthetic latencies and on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from lmship.rounds import fastest, rotated, stability


def test_rounds_rotate_so_each_backend_leads_once():
    order = [rotated(["a", "b", "c"], r) for r in range(3)]
    assert [o[0] for o in order] == ["a", "b", "c"]
    assert all(sorted(o) == ["a", "b", "c"] for o in order)


def test_a_slow_round_is_flagged():
    rng = np.random.default_rng(0)
    quiet = 100 + rng.normal(0, 0.5, 30)
    rounds = np.repeat([0, 1, 2], 10)
    s = stability(quiet, rounds, max_round_spread_pct=10, max_p90_ratio=1.5)
    assert not s["unstable"] and s["spread_pct"] < 2 and s["rounds"] == 3
    busy = quiet.copy()
    busy[10:20] *= 1.3  # round 2 ran next to a CPU hog
    s = stability(busy, rounds, max_round_spread_pct=10, max_p90_ratio=1.5)
    assert s["unstable"] and "rounds differ by 3" in s["unstable_why"]


def test_a_long_tail_is_flagged_even_when_rounds_agree():
    lat = np.array([100.0] * 8 + [300.0] * 2)  # p90 = 280: a quarter of the runs stalled
    s = stability(np.tile(lat, 2), np.repeat([0, 1], 10), max_round_spread_pct=10, max_p90_ratio=1.5)
    assert s["spread_pct"] == 0 and s["unstable"] and "p90" in s["unstable_why"]


def test_fastest_needs_a_gap_beyond_the_spread():
    a = {"name": "a", "median_ms": 100.0, "spread_pct": 3.0, "size_mb": 500}
    b = {"name": "b", "median_ms": 102.0, "spread_pct": 1.0, "size_mb": 250}
    c = {"name": "c", "median_ms": 150.0, "spread_pct": 1.0, "size_mb": 100}
    winner, tied = fastest([c, a, b])
    # a and b are 2 % apart with a 3 % spread: tied, the smaller file is named first
    assert winner["name"] == "b" and [t["name"] for t in tied] == ["a"]
    a_clear = {**a, "spread_pct": 1.0}
    winner, tied = fastest([c, a_clear, b])
    assert winner["name"] == "a" and tied == []
    with pytest.raises(ValueError):
        fastest([])
