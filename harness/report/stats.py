"""The statistics of the tables, with their levels named and sourced: Wilson's interval for one run's
accuracy, Newcombe's for the difference of two, a paired bootstrap over seeds, and the verdict.
Pure functions of numbers: no database, no pandas."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


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
# Harness choice: a run "never beat chance" (or "ended at chance") when its best (final) validation
# accuracy stays below this multiple of 1/num_classes: a collapsed model predicting one class scores
# about 1/k on a balanced set, and the val split's class shares wobble a little around 1/k.
CHANCE_MARGIN = 1.2
# Harness choice: "epochs to 90% of best" says how fast a recipe gets near its best without
# rewarding the last noisy fraction of a point (a plateau's wobble can move the best epoch a lot).
NEAR_BEST = 0.9

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


def newcombe(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """Interval of p2 - p1 from the two Wilson intervals (Newcombe 1998, method 10): one seed per side."""
    l1, u1 = wilson(p1 * n1, n1)
    l2, u2 = wilson(p2 * n2, n2)
    d = p2 - p1
    return d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)


def paired_bootstrap(before: list[float], after: list[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                     seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mean(after - before) over seeds paired by seed number, resampling the pairs."""
    d = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(resamples, len(d)))
    means = d[idx].mean(axis=1)
    lo, hi = BOOTSTRAP_QUANTILES
    return float(np.quantile(means, lo)), float(np.quantile(means, hi))


def verdict(lo: float, hi: float) -> str:
    if pd.isna(lo) or pd.isna(hi):
        return ""
    return VERDICTS[0] if lo > NO_DIFFERENCE else VERDICTS[1] if hi < NO_DIFFERENCE else VERDICTS[2]
