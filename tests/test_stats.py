"""harness.tables.stats: the paired intervals against hand computations and a published value, the
collapse test against an exact tail sum, and small coverage simulations of each interval the tables use
(the full ones: benchmarks/coverage.py, benchmarks/results/coverage.md)."""

from __future__ import annotations

import math
import re
from fractions import Fraction

import numpy as np
import pytest

from harness.tables import stats
from harness.tables.stats import (
    COLLAPSE_ALPHA,
    PAIRED_IMAGES_METHOD,
    SEED_T_METHOD,
    beats_chance,
    newcombe_paired_counts,
    paired_bootstrap,
    paired_image_interval,
    seed_t_interval,
    verdict,
)


def vectors(both: int, only_before: int, only_after: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two runs with this 2x2 table (images in any order: the order is not used)."""
    before = np.repeat([1, 1, 0, 0], [both, only_before, only_after, neither])
    after = np.repeat([1, 0, 1, 0], [both, only_before, only_after, neither])
    return before, after


# --- paired_image_interval -------------------------------------------------------------------------

def test_paired_image_interval_by_hand():
    # The 2x2 table, n = 34 images: a = 12 both right, b = 9 only before right, c = 2 only after right,
    # d = 11 both wrong. Before: (a+b)/n = 21/34 = 0.617647; after: (a+c)/n = 14/34 = 0.411765;
    # theta = after - before = (c-b)/n = -7/34 = -0.205882.
    # Wilson 95% (z = 1.959964): before 21/34 -> [0.450410, 0.760998]; after 14/34 -> [0.263660, 0.577784].
    # Margins a+b = 21, c+d = 13, a+c = 14, b+d = 20: product 76440, sqrt 276.4778.
    # ad - bc = 132 - 18 = 114 > n/2 = 17, so Newcombe's corrected numerator is 114 - 17 = 97:
    # phi = 97 / 276.4778 = 0.350842 (uncorrected 114 / 276.4778 = 0.412330).
    # delta = sqrt((0.411765-0.263660)^2 - 2 phi (0.411765-0.263660)(0.760998-0.617647) + (0.760998-0.617647)^2)
    #       = 0.166094  ->  lower = -0.205882 - 0.166094 = -0.371976
    # eps   = sqrt((0.577784-0.411765)^2 - 2 phi (0.577784-0.411765)(0.617647-0.450410) + (0.617647-0.450410)^2)
    #       = 0.189865  ->  upper = -0.205882 + 0.189865 = -0.016017
    # (With the uncorrected phi: delta 0.158039, eps 0.180650 -> [-0.363921, -0.025233].)
    before, after = vectors(12, 9, 2, 11)
    lo, hi = paired_image_interval(before, after)
    assert lo == pytest.approx(-0.371976, abs=5e-5) and hi == pytest.approx(-0.016017, abs=5e-5)
    lo0, hi0 = newcombe_paired_counts(12, 9, 2, 11, correct_phi=False)
    assert lo0 == pytest.approx(-0.363921, abs=5e-5) and hi0 == pytest.approx(-0.025233, abs=5e-5)
    # Swapping the runs mirrors the interval.
    assert paired_image_interval(after, before) == pytest.approx((-hi, -lo), abs=1e-12)
    # bools, ints and lists give the same.
    assert paired_image_interval(before.astype(bool).tolist(), list(after)) == pytest.approx((lo, hi), abs=1e-12)


def test_paired_image_interval_published_example():
    # Fagerland, Lydersen & Laake (2017), Statistical Analysis of Contingency Tables, ch. 8: complete response
    # before and after consolidation therapy (Cavo et al. 2012), table [[59, 6], [16, 80]] (rows: before,
    # columns: after): Newcombe square-and-add, before - after = -0.0621 (95% CI -0.1186 to -0.0046).
    # Here after - before, so the interval is mirrored.
    before, after = vectors(59, 6, 16, 80)
    lo, hi = paired_image_interval(before, after)
    assert (round(lo, 4), round(hi, 4)) == (0.0046, 0.1186)


def test_paired_image_interval_degenerate():
    rng = np.random.default_rng(0)
    same = rng.random(359) < 0.7
    lo, hi = paired_image_interval(same, same)  # identical runs: b = c = 0; phi 1, just under after the correction
    assert -1 <= lo < 0 < hi <= 1
    for value in (1, 0):  # all right (or all wrong) on both sides: a margin is 0, so phi = 0
        lo, hi = paired_image_interval(np.full(359, value), np.full(359, value))
        assert -1 <= lo < 0 < hi <= 1 and lo == pytest.approx(-hi)
        assert hi == pytest.approx(3.8416 / (359 + 3.8416), abs=1e-4)  # 1 - Wilson lower limit of 359/359
    assert all(math.isnan(x) for x in paired_image_interval([], []))
    with pytest.raises(ValueError, match="same images"):
        paired_image_interval([1, 0, 1], [1, 0])
    lo, hi = paired_image_interval([1], [0])  # one image: still an interval in [-1, 1]
    assert -1 <= lo < -0.5 and hi <= 1


# --- seed_t_interval -------------------------------------------------------------------------------

def test_seed_t_interval_by_hand():
    # differences after - before = [1, 2, 3]: mean 2, sample sd 1, t(0.975, 2 df) = 4.302653
    # -> 2 -+ 4.302653 / sqrt(3) = [-0.484138, 4.484138]
    lo, hi = seed_t_interval([0.5, 0.5, 0.5], [1.5, 2.5, 3.5])
    assert lo == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-5)
    assert hi == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-5)
    # two seeds: t(0.975, 1) = 12.706205; differences [0.1, 0.3]: mean 0.2, sd 0.141421 -> 0.2 -+ 1.270620
    lo, hi = seed_t_interval(np.array([0.5, 0.4]), np.array([0.6, 0.7]))
    assert (lo, hi) == pytest.approx((0.2 - 1.270620, 0.2 + 1.270620), abs=1e-5)


def test_seed_t_interval_degenerate():
    assert all(math.isnan(x) for x in seed_t_interval([0.5], [0.6]))
    assert all(math.isnan(x) for x in seed_t_interval([], []))
    # All differences equal: no spread to estimate, and no zero-width interval claiming certainty.
    assert all(math.isnan(x) for x in seed_t_interval([0.5, 0.25, 0.0], [0.75, 0.5, 0.25]))
    with pytest.raises(ValueError):
        seed_t_interval([0.5, 0.6], [0.6])


# --- beats_chance ----------------------------------------------------------------------------------

def tails(n: int, p: Fraction) -> list[Fraction]:
    """[P(X >= k) for k = 0..n] for X ~ Binomial(n, p), exactly: sums of math.comb(n, j) p^j (1-p)^(n-j)."""
    out = [Fraction(0)] * (n + 2)
    for k in range(n, -1, -1):
        out[k] = out[k + 1] + math.comb(n, k) * p ** k * (1 - p) ** (n - k)
    return out[: n + 1]


def test_beats_chance():
    assert COLLAPSE_ALPHA == 0.01
    assert not beats_chance(36, 359, 10)  # 10.0%: chance itself (P(X >= 36) = 0.519)
    assert beats_chance(60, 359, 10)  # 16.7%: P(X >= 60) = 5.8e-5
    # The exact tail, by hand: the smallest count that rejects at 1% is where beats_chance switches.
    tail = tails(359, Fraction(1, 10))
    assert float(tail[36]) == pytest.approx(0.518699, abs=1e-6)
    assert float(tail[60]) == pytest.approx(5.8159e-5, rel=1e-4)
    first = next(k for k in range(360) if tail[k] <= Fraction(1, 100))
    assert not beats_chance(first - 1, 359, 10) and beats_chance(first, 359, 10)
    assert 36 < first < 60
    # alpha moves the threshold; 100 classes, 5 of 100 right: P(X >= 5 | 100, 0.01) = 0.003432
    assert float(tails(100, Fraction(1, 100))[5]) == pytest.approx(0.003432, abs=1e-6)
    assert beats_chance(5, 100, 100) and not beats_chance(5, 100, 100, alpha=0.001)
    assert not beats_chance(0, 0, 10)
    with pytest.raises(ValueError):
        beats_chance(11, 10, 10)


# --- the rest keeps working -------------------------------------------------------------------------

def test_names_and_old_functions():
    assert "Newcombe (1998)" in PAIRED_IMAGES_METHOD and "t" in SEED_T_METHOD.split()
    for fn in (paired_image_interval, seed_t_interval, beats_chance, newcombe_paired_counts):
        assert re.search(r"\b(19|20)\d\d\b", fn.__doc__)  # cites its source with a year
    assert verdict(0.01, 0.2) == "better" and verdict(-0.2, -0.01) == "worse"
    assert verdict(-0.1, 0.1) == "no detectable difference" and verdict(math.nan, 0.1) == "" and verdict(None, 1) == ""
    lo, hi = paired_bootstrap([0.5, 0.6, 0.55], [0.8, 0.9, 0.85])
    assert (lo, hi) == pytest.approx((0.3, 0.3))  # every difference 0.3
    assert all(math.isnan(x) for x in stats.wilson(0, 0))
    assert stats.newcombe(0.5, 100, 0.6, 100)[0] < 0.1 < stats.newcombe(0.5, 100, 0.6, 100)[1]


# --- coverage, small: the full simulation is benchmarks/coverage.py --------------------------------

def test_paired_image_interval_coverage():
    # Two correlated runs on 359 images, 50% -> 70%, P(both right) = 0.425 (phi 0.33): 3,000 tables.
    rng = np.random.default_rng(1)
    cells = np.array([0.425, 0.075, 0.275, 0.225])
    counts = rng.multinomial(359, cells, size=3000)
    lo, hi = newcombe_paired_counts(*counts.T)
    for i in range(20):  # the vectorised form is paired_image_interval's
        assert paired_image_interval(*vectors(*counts[i])) == pytest.approx((lo[i], hi[i]), abs=1e-12)
    truth = 0.7 - 0.5
    assert 0.93 <= np.mean((lo <= truth) & (truth <= hi)) <= 0.97


def seed_accs(rng: np.random.Generator, draws: int, seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """Test accuracies per seed: 60% + N(0, 2 pts) and 70% + N(0, 7 pts), each + binomial noise of 359 images."""
    b = np.clip(0.60 + 0.02 * rng.standard_normal((draws, seeds)), 0, 1)
    a = np.clip(0.70 + 0.07 * rng.standard_normal((draws, seeds)), 0, 1)
    return rng.binomial(359, b) / 359, rng.binomial(359, a) / 359


@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_seed_t_interval_coverage(seeds):
    before, after = seed_accs(np.random.default_rng(seeds), 2000, seeds)
    ends = np.array([seed_t_interval(b, a) for b, a in zip(before, after, strict=True)])
    assert 0.93 <= np.mean((ends[:, 0] <= 0.1) & (0.1 <= ends[:, 1])) <= 0.97


def test_paired_bootstrap_undercovers_with_two_seeds():
    # Why the tables no longer use it: with 2 seeds the percentile interval is [min, max] of the two
    # differences, which holds the mean half the time (3 seeds: 3/4), though it was labelled 95%.
    before, after = seed_accs(np.random.default_rng(7), 300, 2)
    ends = np.array([paired_bootstrap(b, a, resamples=2000) for b, a in zip(before, after, strict=True)])
    assert np.allclose(ends, np.sort(after - before, axis=1))
    assert np.mean((ends[:, 0] <= 0.1) & (0.1 <= ends[:, 1])) < 0.65


# --- seeds_and_images_interval: several seeds on one shared test split ------------------------------

def test_seeds_and_images_interval_by_hand():
    # 2 seeds x 4 images. before: seed 0 right on images 0,1; seed 1 on 0,2. after: seed 0 on 0,1,2; seed 1 on 0,1,2,3.
    b = np.array([[1, 1, 0, 0], [1, 0, 1, 0]], dtype=bool)
    a = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=bool)
    lo, hi, df = stats.seeds_and_images_interval(b, a)
    # Per-seed differences 1/4 and 2/4: s^2 = 1/32, over k = 2 -> 1/64; t(1, .975) = 12.706.
    # d_i = (0, 1/2, 1/2, 1/2), mean 3/8. Residuals D - seed mean - image mean + grand: rows (0,1,0,0) and (0,0,1,1)
    # less their means... computed: MS_E = sum(resid^2) / (1 * 3).
    diff = a.astype(float) - b
    resid = diff - diff.mean(1, keepdims=True) - diff.mean(0, keepdims=True) + diff.mean()
    ms_e = (resid ** 2).sum() / 3
    m = 1.5 / 6  # sum d / (n + 2)
    d = diff.mean(0)
    ss = ((d - m) ** 2).sum() + 0.5 * (1 - m) ** 2 + 0.5 * (1 + m) ** 2 + m ** 2
    image = max(ss / 5 / 6 - ms_e / 8, 1 / 30)
    half = math.sqrt(12.706204736174707 ** 2 / 64 + stats.stdtrit(3, 0.975) ** 2 * image)
    assert (lo, hi) == pytest.approx((max(3 / 8 - half, -1), min(3 / 8 + half, 1)))
    assert df == 1


def test_seeds_and_images_interval_never_zero_width_and_no_pooling():
    # Both seeds moved by exactly the same images (the case the old table pooled): the interval still carries t over
    # 1 degree of freedom, wide, and two identical recipes still get a width from the images.
    rng = np.random.default_rng(3)
    b = rng.random((2, 359)) < 0.95
    a = b.copy()
    a[:, :5] = True
    b[:, :5] = False  # every seed +5 images
    lo, hi, _ = stats.seeds_and_images_interval(b, a)
    assert lo < 5 / 359 < hi and hi - lo > 0.01
    lo, hi, _ = stats.seeds_and_images_interval(b, b)
    assert lo < 0 < hi
    assert all(math.isnan(x) for x in stats.seeds_and_images_interval(b[:1], a[:1]))
    with pytest.raises(ValueError):
        stats.seeds_and_images_interval(b, a[:, :10])


def _shared_split(rng, draws, k, seed_sd):
    """k seeds a side scored on one shared split of 359 images with per-image difficulty (probit model); the truth
    is the difference of expected accuracies over seeds and images (benchmarks/coverage.py's table (d), small)."""
    from scipy.special import ndtr, ndtri

    tau, omega, sv = 3.0, 1.5, seed_sd  # images mostly decide (near-certain right or wrong), partly per recipe
    mus = [float(ndtri(p)) * math.sqrt(1 + tau ** 2 + omega ** 2 + sv ** 2) for p in (0.6, 0.7)]
    u = tau * rng.standard_normal((draws, 1, 359))
    out = [rng.random((draws, k, 359)) < ndtr(mu + sv * rng.standard_normal((draws, k, 1)) - u
                                              + omega * rng.standard_normal((draws, 1, 359))) for mu in mus]
    return out[0].astype(float), out[1].astype(float), 0.1


@pytest.mark.parametrize("k", [3, 5])
def test_seeds_and_images_covers_a_shared_split_where_t_over_seeds_does_not(k):
    # A small seed effect: t over seeds sees only the seeds' spread, not the test sample they all share, and gets
    # worse with more seeds (the simulation: 84% at 3 seeds, 69% at 5).
    before, after, truth = _shared_split(np.random.default_rng(10 + k), 1500, k, seed_sd=0.05)
    lo, hi, _ = stats._seeds_and_images_rows(before, after)
    assert np.mean((lo <= truth) & (truth <= hi)) >= 0.93
    t_lo, t_hi = stats._t_rows(after.mean(-1) - before.mean(-1))
    assert np.mean((t_lo <= truth) & (truth <= t_hi)) < 0.90


def test_sequential_level():
    assert stats.looks() == stats.MAX_SEEDS - stats.FIRST_LOOK + 1 == 4
    assert stats.sequential_confidence() == pytest.approx(1 - 0.05 / 4)
