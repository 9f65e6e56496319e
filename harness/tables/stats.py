"""The statistics of the tables, with their levels named and sourced: Wilson's interval for one run's
accuracy; for the difference of two recipes scored on the same test images, Newcombe's paired interval
over the images (one seed a side) or Student's t over seeds paired by seed number (several); the
collapse test (an exact binomial test against chance); and the verdict. Newcombe's unpaired interval and
the percentile bootstrap over seeds stay for older callers: the bootstrap is not used for the tables
(with 2 seeds it covers about half the time, benchmarks/results/coverage.md).
Pure functions of numbers: no database, no pandas."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# scipy.special, not scipy.stats: the same functions (scipy.stats.t.ppf and binom.sf call these) without the
# second or so that importing scipy.stats adds to every `harness report`.
from scipy.special import bdtrc, stdtrit

# --- thresholds and levels, each with its source -------------------------------------------------
# Intervals are two-sided 95%: z of the normal distribution (Wilson 1927, Newcombe 1998), and the
# bootstrap's percentile interval between these quantiles (Efron & Tibshirani 1993, ch. 13).
CONFIDENCE = 0.95
Z95 = 1.959963984540054  # = statistics.NormalDist().inv_cdf(0.975)
BOOTSTRAP_QUANTILES = (0.025, 0.975)  # (1 - CONFIDENCE) / 2 from each end
# Harness choice: resamples drawn from a fixed seed, so the same rows always give the same interval
# (10,000: the usual order, e.g. scipy.stats.bootstrap draws 9,999).
BOOTSTRAP_RESAMPLES = 10_000
# Verdict on after - before: "better" / "worse" when the interval excludes this difference, else
# no detectable difference (the usual reading of a confidence interval against the null).
NO_DIFFERENCE = 0.0
VERDICTS = ("better", "worse", "no detectable difference")
# Harness choice: the level of the collapse test (`beats_chance`), a one-sided exact binomial test of
# "accuracy = 1/classes" against "above it". A run counts as trained when the test rejects at this level,
# so a model that is exactly at chance passes as trained 1% of the time (at most: the test is exact and
# discrete), and a run that did learn a little may be called collapsed on a small test set.
COLLAPSE_ALPHA = 0.01
# Harness choice: "epochs to 90% of best" says how fast a recipe gets near its best without
# rewarding the last noisy fraction of a point (a plateau's wobble can move the best epoch a lot).
NEAR_BEST = 0.9

# The methods' names, for the tables' interval column and legends.
PAIRED_IMAGES_METHOD = "Newcombe (1998) paired, over test images"
SEED_T_METHOD = "paired t over seeds"
SEEDS_AND_IMAGES_METHOD = "paired over seeds and test images (square-and-add)"

# The sequential seed rule (`--seeds auto`): FIRST_LOOK seeds per cell, then one more seed at a time for the
# comparisons still undecided, up to MAX_SEEDS; a comparison is looked at once per seed count, so at most
# MAX_SEEDS - FIRST_LOOK + 1 looks. Each look's interval is at level 1 - alpha / looks (Bonferroni: the chance
# that any look's interval misses is at most alpha, so the verdict's error rate holds whatever look stops it;
# e.g. Jennison & Turnbull 2000, Group Sequential Methods, sec. 2.4 on repeated significance tests). Harness
# choice: 2 is the fewest seeds that show a spread, 5 the most the default benchmark's budget allows.
FIRST_LOOK, MAX_SEEDS = 2, 5


def looks(first: int = FIRST_LOOK, cap: int = MAX_SEEDS) -> int:
    """How many times the sequential rule may look at one comparison."""
    return cap - first + 1


def sequential_confidence(first: int = FIRST_LOOK, cap: int = MAX_SEEDS, confidence: float = CONFIDENCE) -> float:
    """The level of each look's interval under the sequential rule (Bonferroni over its looks)."""
    return 1 - (1 - confidence) / looks(first, cap)

# Number of classes of the registered datasets whose size the run spec does not state.
DATASET_CLASSES = {"digits": 10, "cifar10": 10, "cifar100": 100, "tinyimagenet": 200}


# --- statistics ----------------------------------------------------------------------------------

def wilson(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927): one run's accuracy on n images."""
    if n <= 0:
        return math.nan, math.nan
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _wilson_arrays(correct: np.ndarray, n: np.ndarray, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """`wilson` over arrays (n > 0), for the paired interval and the coverage simulations."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return np.maximum(0.0, centre - half), np.minimum(1.0, centre + half)


def newcombe(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """Interval of p2 - p1 from the two Wilson intervals (Newcombe 1998, method 10): one seed per side."""
    l1, u1 = wilson(p1 * n1, n1)
    l2, u2 = wilson(p2 * n2, n2)
    d = p2 - p1
    return d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def newcombe_paired_counts(a, b, c, d, *, correct_phi: bool = True, z: float = Z95) -> tuple[np.ndarray, np.ndarray]:
    """Newcombe's paired interval of after - before from the 2x2 table of two runs on the same n images,
    elementwise over arrays of tables (scalars work too): a = both right, b = only `before` right,
    c = only `after` right, d = both wrong (all n > 0).

    Newcombe, R. G. (1998), "Improved confidence intervals for the difference between binomial
    proportions based on paired data", Statistics in Medicine 17:2635-2650, method 10 (square-and-add of
    the two marginal Wilson score intervals with the correlation correction), as worked in Altman et al.
    (2000), Statistics with Confidence, 2nd ed., p. 52, and in Fagerland, Lydersen & Laake (2017),
    Statistical Analysis of Contingency Tables, ch. 8 ("Newcombe square-and-add"). With p_b = (a+b)/n,
    p_a = (a+c)/n, their Wilson limits [l_b, u_b], [l_a, u_a], and theta = p_a - p_b = (c - b)/n:

        lower = theta - sqrt((p_a - l_a)^2 - 2 phi (p_a - l_a)(u_b - p_b) + (u_b - p_b)^2)
        upper = theta + sqrt((u_a - p_a)^2 - 2 phi (u_a - p_a)(p_b - l_b) + (p_b - l_b)^2)

    phi = A / sqrt((a+b)(c+d)(a+c)(b+d)), 0 when that product is 0. With `correct_phi` (the default, as
    both books compute it; Fagerland et al.'s table [[59, 6], [16, 80]] gives -0.1186 to -0.0046 for
    before - after, tests/test_stats.py) A is ad - bc shrunk towards 0 by n/2: ad - bc - n/2 when
    ad - bc > n/2, 0 when 0 <= ad - bc <= n/2, ad - bc when negative; it widens the interval a little when
    the runs agree. `correct_phi=False`: the plain phi coefficient, A = ad - bc (e.g. MKmisc's binomDiffCI
    "wilson"); benchmarks/results/coverage.md compares the two."""
    a, b, c, d = (np.asarray(x, dtype=float) for x in (a, b, c, d))
    n = a + b + c + d
    p_b, p_a = (a + b) / n, (a + c) / n
    l_b, u_b = _wilson_arrays(a + b, n, z)
    l_a, u_a = _wilson_arrays(a + c, n, z)
    cross = a * d - b * c
    if correct_phi:
        cross = np.where(cross > n / 2, cross - n / 2, np.where(cross >= 0, 0.0, cross))
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = np.where(margins > 0, cross / np.sqrt(np.where(margins > 0, margins, 1.0)), 0.0)
    theta = p_a - p_b
    # A negative radicand is rounding (|phi| <= 1 keeps it >= 0): clip at 0.
    delta = np.sqrt(np.maximum(0.0, (p_a - l_a) ** 2 - 2 * phi * (p_a - l_a) * (u_b - p_b) + (u_b - p_b) ** 2))
    eps = np.sqrt(np.maximum(0.0, (u_a - p_a) ** 2 - 2 * phi * (u_a - p_a) * (p_b - l_b) + (p_b - l_b) ** 2))
    return theta - delta, theta + eps


def paired_image_interval(before: Sequence[bool] | np.ndarray,
                          after: Sequence[bool] | np.ndarray) -> tuple[float, float]:
    """The 95% interval of mean(after) - mean(before) (proportions, not %) for two runs scored on the same
    test images, from each image's correctness (0/1 or bools, in the same image order): Newcombe (1998),
    "Improved confidence intervals for the difference between binomial proportions based on paired data",
    Statistics in Medicine 17:2635-2650, method 10 (`newcombe_paired_counts`). It holds the test images'
    sampling noise only, not a seed's. Empty input: (nan, nan); unequal lengths: ValueError."""
    b = np.asarray(before, dtype=bool).ravel()
    a = np.asarray(after, dtype=bool).ravel()
    if len(a) != len(b):
        raise ValueError(f"paired_image_interval: {len(b)} images before, {len(a)} after; they must be the same images")
    if len(a) == 0:
        return math.nan, math.nan
    n11 = int(np.sum(b & a))
    n10 = int(np.sum(b & ~a))
    n01 = int(np.sum(~b & a))
    n00 = len(a) - n11 - n10 - n01
    lo, hi = newcombe_paired_counts(n11, n10, n01, n00)
    return float(lo), float(hi)


def _t_rows(diffs: np.ndarray, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Student's t interval of each row's mean (rows of >= 2 differences), for `seed_t_interval` and the
    coverage simulations."""
    k = diffs.shape[-1]
    mean = diffs.mean(axis=-1)
    t = stdtrit(k - 1, 0.5 + confidence / 2)  # = scipy.stats.t.ppf(0.975, k - 1) at 95%
    half = t * diffs.std(axis=-1, ddof=1) / math.sqrt(k)
    return mean - half, mean + half


def seed_t_interval(before: Sequence[float] | np.ndarray, after: Sequence[float] | np.ndarray, *,
                    confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The 95% interval of the mean of after - before over seeds paired by position (seed i of one recipe
    with seed i of the other): Student's t with n - 1 degrees of freedom, mean +- t(0.975, n-1) s / sqrt(n)
    ("Student" 1908, Biometrika 6:1-25; the paired t interval of any text, e.g. Altman 1991, Practical
    Statistics for Medical Research, sec. 9.6). It assumes the per-seed differences are roughly normal: a
    recipe that collapses in some seeds breaks that (benchmarks/results/coverage.md), which is why the
    tables report collapses next to it. It leaves out the error of a test split all seeds share: the tables
    use it only where no per-image results exist (`seeds_and_images_interval` otherwise). Fewer than 2 pairs
    or all differences equal (no spread to estimate: a zero-width interval would claim certainty): (nan, nan);
    unequal lengths: ValueError."""
    b = np.asarray(before, dtype=float).ravel()
    a = np.asarray(after, dtype=float).ravel()
    if len(a) != len(b):
        raise ValueError(f"seed_t_interval: {len(b)} seeds before, {len(a)} after; pair them by seed first")
    if len(a) < 2:
        return math.nan, math.nan
    d = a - b
    if np.all(d == d[0]):
        return math.nan, math.nan
    lo, hi = _t_rows(d, confidence)
    return float(lo), float(hi)


def seeds_and_images_interval(before: np.ndarray, after: np.ndarray, *,
                              confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(lo, hi, degrees of freedom of the seeds' term): the interval of mean(after) - mean(before) (proportions)
    for k seeds a side paired by seed, all scored on the same n test images. `before`, `after`: per-image
    correctness, shape (k, n), row s = seed s. It carries both noises, each with its own uncertainty:

        half-width = sqrt( (t(k-1) * s_seeds / sqrt(k))^2 + (t(n-1) * SE_images)^2 )

    - s_seeds: the SD of the k per-seed differences (what another seed would change; it holds each seed's own
      image-by-seed noise too), with Student's t on k - 1 degrees of freedom: with 2 seeds, t = 12.7 at 95%;
    - SE_images: the error of the test sample every seed shares (t over seeds cannot see it): the variance of
      the seed-averaged difference over images, less the seed-by-image part already in s_seeds (the residual
      mean square of the seeds x images layout / kn), with Agresti & Min's (2005, Statistics in Medicine
      24:729-740) half an image added to each cell of the 2x2 table; that adjustment's own share is its floor,
      so two recipes that agree on every image still get an interval.
    The two are combined by square-and-add (the MOVER of Zou & Donner 2008, Statistics in Medicine 27:1693-1702;
    Newcombe's interval is one), which keeps each term's own t. A Satterthwaite t on the summed variance was
    tried first and undercovers with 2 seeds (87-91% at a seed SD of 3-10 points): one degree of freedom cannot
    say the seeds' spread is small. Checked by simulating a shared test split with per-image difficulty
    (benchmarks/coverage.py, table (d)). k = 1 gives no spread: use `paired_image_interval` (images only,
    labelled so). No pooling across seeds, no zero-width interval."""
    b = np.atleast_2d(np.asarray(before, dtype=float))
    a = np.atleast_2d(np.asarray(after, dtype=float))
    if a.shape != b.shape:
        raise ValueError(f"seeds_and_images_interval: {b.shape} (seeds, images) before, {a.shape} after; "
                         "pair them by seed, on the same images")
    k, n = a.shape
    if k < 2 or n < 2:
        return math.nan, math.nan, math.nan
    lo, hi, df = _seeds_and_images_rows(b[None], a[None], confidence)
    return float(lo[0]), float(hi[0]), float(df[0])


def _seeds_and_images_rows(before: np.ndarray, after: np.ndarray,
                           confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`seeds_and_images_interval` over a leading axis of draws: arrays of shape (draws, k, n)."""
    k, n = after.shape[-2:]
    diff = after - before  # D[s, i]
    per_seed = diff.mean(axis=-1)  # (draws, k)
    d = diff.mean(axis=-2)  # (draws, n): the seed-averaged difference of each image
    centre = d.mean(axis=-1)
    # Two-way layout without replication (seeds x images): the residual mean square is the seed-by-image noise.
    resid = diff - per_seed[..., None] - d[..., None, :] + centre[..., None, None]
    ms_e = (resid ** 2).sum(axis=(-2, -1)) / ((k - 1) * (n - 1))
    # The seeds' term: their spread as it is (it holds each seed's own image noise), over k - 1 degrees of freedom.
    seed_var = per_seed.var(axis=-1, ddof=1) / k
    # The test sample's term: what all seeds share, the images' spread less the seed-by-image noise the seeds'
    # term already holds. Agresti-Min: the n images plus pseudo-images (+1 and -1 with weight 1/2, 0 with
    # weight 1), n + 2 in all; the pseudo-images' own share is the floor, so it is never zero.
    m = d.sum(axis=-1) / (n + 2)
    ss = ((d - m[..., None]) ** 2).sum(axis=-1) + 0.5 * (1 - m) ** 2 + 0.5 * (1 + m) ** 2 + m ** 2
    floor = 1.0 / ((n + 1) * (n + 2))
    image_var = np.maximum(ss / (n + 1) / (n + 2) - ms_e / (k * n), floor)
    q = 0.5 + confidence / 2
    half = np.sqrt(stdtrit(k - 1, q) ** 2 * seed_var + stdtrit(n - 1, q) ** 2 * image_var)
    return np.maximum(centre - half, -1.0), np.minimum(centre + half, 1.0), np.full_like(centre, k - 1.0)


def paired_bootstrap(before: list[float], after: list[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(after - before) over seeds paired by seed number, resampling the pairs
    (Efron & Tibshirani 1993, ch. 13). Not used for the tables: with few seeds it is far too narrow (2 seeds:
    [min, max] of the two differences, which covers the mean about 50% of the time; 3 seeds about 75%:
    benchmarks/results/coverage.md). `seed_t_interval` replaces it."""
    d = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = BOOTSTRAP_QUANTILES
    return float(np.quantile(means, lo)), float(np.quantile(means, hi))


def beats_chance(correct: int, n: int, classes: int, *, alpha: float = COLLAPSE_ALPHA) -> bool:
    """Whether `correct` right out of `n` images is above chance (1/classes): a one-sided exact binomial
    test of H0 accuracy = 1/classes against accuracy > 1/classes (Clopper & Pearson 1934; e.g.
    scipy.stats.binomtest(..., alternative="greater")), True when H0 is rejected at level `alpha`, i.e.
    P(X >= correct | n, 1/classes) <= alpha, computed as scipy.special.bdtrc(correct - 1, n, 1/classes)
    (= scipy.stats.binom.sf(correct - 1, n, 1/classes)). No images (n <= 0): False, nothing shows it
    trained; correct outside [0, n]: ValueError."""
    if n <= 0:
        return False
    if not 0 <= correct <= n:
        raise ValueError(f"beats_chance: {correct} correct out of {n} images")
    return bool(bdtrc(correct - 1, n, 1.0 / classes) <= alpha)


def _missing(x: object) -> bool:
    """None, NaN or pandas' NA (float() of pd.NA raises TypeError)."""
    if x is None:
        return True
    try:
        return math.isnan(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True


def verdict(lo: float, hi: float) -> str:
    """"better" / "worse" when the interval [lo, hi] of after - before excludes NO_DIFFERENCE, else "no
    detectable difference"; "" when either end is missing."""
    if _missing(lo) or _missing(hi):
        return ""
    return VERDICTS[0] if lo > NO_DIFFERENCE else VERDICTS[1] if hi < NO_DIFFERENCE else VERDICTS[2]
