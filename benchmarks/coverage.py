"""Coverage of the before/after tables' 95% intervals, by simulation: how often each interval holds the
true difference it claims to, on models of what the harness measures.

    uv run python benchmarks/coverage.py            # the full run (a few minutes on 2 cores)
    uv run python benchmarks/coverage.py --quick    # a few seconds, fewer draws; prints, writes nothing

Four tables (benchmarks/results/coverage.md):

(a) `stats.paired_image_interval` (Newcombe 1998 paired, method 10), one run a side on n = 359 test
    images: the two runs' right/wrong on each image drawn from a 2x2 table of probabilities with the given
    true accuracies and agreement, from independent (0) to the most the two accuracies allow (1: every
    image the weaker run gets right, the stronger does too). Next to it, the same interval with the plain
    phi (no correction) and Newcombe's unpaired interval (`stats.newcombe`, which ignores the pairing).
(b) `stats.seed_t_interval` (paired t over seeds) for 2, 3, 5 and 10 seeds: each seed's test accuracy is
    the recipe's true accuracy + a seed effect (normal, SD 2 points for "before", 7 for "after") + the
    binomial noise of 359 images; and a bimodal case where "after" collapses (to 10%, plus the same
    image noise) with probability 0.3 per seed. The true difference is that of the expected accuracies.
(c) `stats.paired_bootstrap` (percentile, the tables' old interval over seeds) on (b)'s normal model.
(d) what the tables ship for several seeds, on the case that happens: every seed of both recipes scored on one
    shared test split of images with per-image difficulty, seed effects of 0.5-10 points, 1-5 seeds, the
    `--seeds auto` sequential rule, and selection of the lr on validation (table `_d`'s comments).

Every draw comes from a fixed seed, so a rerun gives the same table.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py
from _common import RESULTS, command_line, importable_harness, md_table, stamp  # noqa: E402

importable_harness()
from harness.tables import stats  # noqa: E402

N_IMAGES = 359
PAIRS = [(0.5, 0.7), (0.9, 0.95), (0.97, 0.98), (0.3, 0.3)]  # (before, after) true accuracies
AGREEMENT = [0.0, 0.5, 0.9, 1.0]  # share of the most correlation the two accuracies allow
SEEDS = [2, 3, 5, 10]
BOOT_SEEDS = [2, 3, 5]
BEFORE_ACC, BEFORE_SD = 0.60, 0.02
AFTER_ACC, AFTER_SD = 0.70, 0.07
COLLAPSE_P, COLLAPSE_ACC = 0.3, 0.10


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo")  # Linux; elsewhere platform's name
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())
    return f"CPU {name}, {os.cpu_count()} cores"


def mc(cov: float, draws: int) -> str:
    """Coverage in % with the simulation's own 95% margin (binomial, normal approximation)."""
    return f"{100 * cov:.1f} ± {196 * math.sqrt(max(cov * (1 - cov), 1e-12) / draws):.1f}"


# --- (a) one run a side: Newcombe's paired interval over the images --------------------------------

def cell_probs(p_before: float, p_after: float, agreement: float) -> np.ndarray:
    """P(both right), P(only before), P(only after), P(both wrong) with these marginals: P(both right)
    moves from independence (agreement 0) to min(p_before, p_after) (agreement 1)."""
    indep = p_before * p_after
    p11 = indep + agreement * (min(p_before, p_after) - indep)
    cells = np.array([p11, p_before - p11, p_after - p11, 1 - p_before - p_after + p11])
    return np.clip(cells, 0.0, 1.0) / np.clip(cells, 0.0, 1.0).sum()


def unpaired_newcombe(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`stats.newcombe` over arrays (checked against it below): square-and-add without the correlation."""
    n = a + b + c + d
    p_b, p_a = (a + b) / n, (a + c) / n
    l_b, u_b = stats._wilson_arrays(a + b, n)
    l_a, u_a = stats._wilson_arrays(a + c, n)
    theta = p_a - p_b
    return theta - np.sqrt((p_a - l_a) ** 2 + (u_b - p_b) ** 2), theta + np.sqrt((u_a - p_a) ** 2 + (p_b - l_b) ** 2)


def table_a(draws: int) -> tuple[list[dict], int]:
    rng = np.random.default_rng(20261201)
    rows = []
    checked = 0
    for p_b, p_a in PAIRS:
        for agree in AGREEMENT:
            probs = cell_probs(p_b, p_a, agree)
            counts = rng.multinomial(N_IMAGES, probs, size=draws).astype(float)
            a, b, c, d = counts.T
            truth = p_a - p_b
            lo, hi = stats.newcombe_paired_counts(a, b, c, d)
            lo0, hi0 = stats.newcombe_paired_counts(a, b, c, d, correct_phi=False)
            ulo, uhi = unpaired_newcombe(a, b, c, d)
            # The vectorised forms are the shipped functions': spot-check a few draws.
            for i in range(3):
                before = np.repeat([1, 1, 0, 0], counts[i].astype(int))
                after = np.repeat([1, 0, 1, 0], counts[i].astype(int))
                assert np.allclose(stats.paired_image_interval(before, after), (lo[i], hi[i]), atol=1e-12)
                assert np.allclose(stats.newcombe(before.mean(), N_IMAGES, after.mean(), N_IMAGES), (ulo[i], uhi[i]),
                                   atol=1e-12)
                checked += 1
            sd_b, sd_a = math.sqrt(p_b * (1 - p_b)), math.sqrt(p_a * (1 - p_a))
            rho = (probs[0] * probs[3] - probs[1] * probs[2]) / (sd_b * sd_a) if sd_b * sd_a > 0 else math.nan
            cover = np.mean((lo <= truth) & (truth <= hi))
            rows.append({
                "before → after": f"{100 * p_b:g}% → {100 * p_a:g}%", "agreement": f"{agree:g}",
                "phi (true)": f"{rho:.2f}", "discordant images": f"{100 * (probs[1] + probs[2]):.1f}%",
                "coverage %": mc(cover, draws),
                "misses: interval below / above truth %":
                    f"{100 * np.mean(hi < truth):.1f} / {100 * np.mean(lo > truth):.1f}",
                "mean width (pts)": f"{100 * np.mean(hi - lo):.1f}",
                "coverage, plain phi %": mc(np.mean((lo0 <= truth) & (truth <= hi0)), draws),
                "coverage, unpaired Newcombe %": mc(np.mean((ulo <= truth) & (truth <= uhi)), draws),
                "unpaired width (pts)": f"{100 * np.mean(uhi - ulo):.1f}",
            })
    return rows, checked


# --- (b), (c) several seeds: t over seeds, and the old percentile bootstrap -----------------------

def seed_accs(rng: np.random.Generator, draws: int, seeds: int, *,
              collapse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(before, after, collapsed) test accuracies, shape (draws, seeds): true accuracy + normal seed effect
    (clipped to [0, 1]) + binomial noise on N_IMAGES images; with `collapse`, "after" ends at COLLAPSE_ACC
    (plus image noise) with probability COLLAPSE_P per seed."""
    p_b = np.clip(BEFORE_ACC + BEFORE_SD * rng.standard_normal((draws, seeds)), 0, 1)
    p_a = np.clip(AFTER_ACC + AFTER_SD * rng.standard_normal((draws, seeds)), 0, 1)
    collapsed = rng.random((draws, seeds)) < COLLAPSE_P if collapse else np.zeros((draws, seeds), bool)
    p_a = np.where(collapsed, COLLAPSE_ACC, p_a)
    return rng.binomial(N_IMAGES, p_b) / N_IMAGES, rng.binomial(N_IMAGES, p_a) / N_IMAGES, collapsed


def true_difference(collapse: bool) -> float:
    """E[after] - E[before] (the clipping at 0 and 1 is more than 4 SD away: ignored)."""
    after = (1 - COLLAPSE_P) * AFTER_ACC + COLLAPSE_P * COLLAPSE_ACC if collapse else AFTER_ACC
    return after - BEFORE_ACC


def table_b(draws: int) -> tuple[list[dict], int]:
    rng = np.random.default_rng(20261202)
    rows = []
    checked = 0
    for collapse in (False, True):
        truth = true_difference(collapse)
        for k in SEEDS:
            before, after, collapsed = seed_accs(rng, draws, k, collapse=collapse)
            lo, hi = stats._t_rows(after - before)
            for i in range(3):  # the vectorised form is seed_t_interval's
                assert np.allclose(stats.seed_t_interval(before[i], after[i]), (lo[i], hi[i]), atol=1e-12)
                checked += 1
            cover = (lo <= truth) & (truth <= hi)
            seen = collapsed.any(axis=1)
            row = {
                "model": "bimodal: after collapses w.p. 0.3" if collapse else "normal",
                "true Δ (pts)": f"{100 * truth:+.1f}", "seeds": k, "coverage %": mc(np.mean(cover), draws),
                "misses: below / above truth %": f"{100 * np.mean(hi < truth):.1f} / {100 * np.mean(lo > truth):.1f}",
                "median width (pts)": f"{100 * np.median(hi - lo):.1f}",
            }
            if collapse:
                row["draws with a collapse seen"] = f"{100 * np.mean(seen):.1f}%"
                row["coverage when none seen %"] = f"{100 * np.mean(cover[~seen]):.1f}" if (~seen).any() else ""
                row["coverage when one or more seen %"] = f"{100 * np.mean(cover[seen]):.1f}" if seen.any() else ""
            rows.append(row)
    return rows, checked


def table_c(draws: int) -> list[dict]:
    rng = np.random.default_rng(20261203)
    truth = true_difference(False)
    rows = []
    for k in BOOT_SEEDS:
        before, after, _ = seed_accs(rng, draws, k, collapse=False)
        ends = np.array([stats.paired_bootstrap(before[i], after[i]) for i in range(draws)])
        lo, hi = ends[:, 0], ends[:, 1]
        t_lo, t_hi = stats._t_rows(after - before)
        rows.append({
            "seeds": k, "bootstrap coverage %": mc(np.mean((lo <= truth) & (truth <= hi)), draws),
            "bootstrap median width (pts)": f"{100 * np.median(hi - lo):.1f}",
            "t coverage, same draws %": mc(np.mean((t_lo <= truth) & (truth <= t_hi)), draws),
            "t median width (pts)": f"{100 * np.median(t_hi - t_lo):.1f}",
        })
    return rows


# --- (d) the case that happens: several seeds scored on one shared test split ---------------------------
#
# A probit model of a classifier on a population of images: image i has a difficulty u_i ~ N(0, TAU^2) shared by
# both recipes (what makes them agree image by image) and a recipe-specific part w_ri ~ N(0, OMEGA^2); seed s of
# recipe r shifts it by v_rs ~ N(0, sigma_v^2). P(right) = Phi(mu_r + v_rs - u_i + w_ri). The n test images are
# drawn once per experiment and every seed of both recipes is scored on them, as in a benchmark. The truth is the
# difference of the expected accuracies over seeds and images: Phi(mu_r / sqrt(1 + TAU^2 + OMEGA^2 + sigma_v^2)).
# sigma_v is set so that a seed moves a recipe's accuracy by SEED_SDS points (standard deviation over seeds).

TAU, OMEGA = 1.5, 0.7
SEED_SDS = [0.5, 1.0, 3.0, 7.0, 10.0]
SHARED_PAIRS = [(0.90, 0.92), (0.60, 0.70), (0.95, 0.95)]
SHARED_SEEDS = [1, 2, 3, 5]
SELECTION_LRS = 3  # lrs per recipe whose true accuracies are equal: validation's choice among them is pure luck
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(60)  # E over a standard normal, by Gauss-Hermite quadrature


def _phi(x: np.ndarray | float) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(x)


def seed_sd_points(mu: float, sigma_v: float) -> float:
    """The SD over seeds of a recipe's expected accuracy (over images), in points."""
    acc = _phi((mu + sigma_v * _GH_X) / math.sqrt(1 + TAU ** 2 + OMEGA ** 2))
    w = _GH_W / _GH_W.sum()
    mean = (w * acc).sum()
    return 100 * math.sqrt(max((w * (acc - mean) ** 2).sum(), 0.0))


def calibrate(p: float, sd_points: float) -> tuple[float, float]:
    """(mu, sigma_v) with expected accuracy p and seed SD `sd_points`, by bisection on sigma_v."""
    def mu_of(sv: float) -> float:
        from scipy.special import ndtri

        return float(ndtri(p)) * math.sqrt(1 + TAU ** 2 + OMEGA ** 2 + sv ** 2)

    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if seed_sd_points(mu_of(mid), mid) < sd_points else (lo, mid)
    sv = (lo + hi) / 2
    return mu_of(sv), sv


def shared_split(rng: np.random.Generator, draws: int, seeds: int, recipes: list[tuple[float, float]], *,
                 lrs: int = 1, splits: int = 1) -> np.ndarray:
    """Per-image correctness, shape (splits, recipes, lrs, draws, seeds, n): each split its own n images (shared
    by every recipe, lr and seed in it), each (recipe, lr, seed) its own seed effect, the same in every split."""
    v = rng.standard_normal((len(recipes), lrs, draws, seeds, 1))
    out = np.empty((splits, len(recipes), lrs, draws, seeds, N_IMAGES), dtype=bool)
    for sp in range(splits):
        u = TAU * rng.standard_normal((draws, 1, N_IMAGES))
        for r, (mu, sv) in enumerate(recipes):
            w = OMEGA * rng.standard_normal((draws, 1, N_IMAGES))
            for j in range(lrs):
                p = _phi(mu + sv * v[r, j] - u + w)
                out[sp, r, j] = rng.random(p.shape) < p
    return out


def _covers(lo: np.ndarray, hi: np.ndarray, truth: float) -> np.ndarray:
    return (lo <= truth) & (truth <= hi)


def sequential(before: np.ndarray, after: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `--seeds auto` rule on (draws, MAX_SEEDS, n) arrays: (lo, hi, seeds used) at the look that stopped."""
    draws = before.shape[0]
    level = stats.sequential_confidence()
    lo, hi = np.full(draws, np.nan), np.full(draws, np.nan)
    used = np.zeros(draws, dtype=int)
    for k in range(stats.FIRST_LOOK, stats.MAX_SEEDS + 1):
        l_k, h_k, _ = stats._seeds_and_images_rows(before[:, :k], after[:, :k], level)
        open_ = used == 0
        stop = open_ & ((l_k > 0) | (h_k < 0) | (k == stats.MAX_SEEDS))
        lo[stop], hi[stop], used[stop] = l_k[stop], h_k[stop], k
    return lo, hi, used


def table_d(draws: int, chunk: int = 500) -> tuple[list[dict], list[dict], int]:
    """(fixed seed counts and the sequential rule, selection on validation, spot checks)."""
    rng = np.random.default_rng(20261207)
    rows, sel_rows, checked = [], [], 0
    for p_b, p_a in SHARED_PAIRS:
        for sd in SEED_SDS:
            recipes = [calibrate(p_b, sd), calibrate(p_a, sd)]
            truth = p_a - p_b
            acc: dict[str, list] = {}
            for start in range(0, draws, chunk):
                x = shared_split(rng, min(chunk, draws - start), stats.MAX_SEEDS, recipes)[0, :, 0]
                b, a = x[0], x[1]
                if start == 0:  # the vectorised form is the shipped function's
                    for i in range(2):
                        one = stats.seeds_and_images_interval(b[i, :3], a[i, :3])
                        rows_ = stats._seeds_and_images_rows(b[i:i + 1, :3].astype(float), a[i:i + 1, :3].astype(float))
                        assert np.allclose(one[:2], [rows_[0][0], rows_[1][0]], atol=1e-12)
                        checked += 1
                for k in SHARED_SEEDS:
                    bk, ak = b[:, :k].astype(float), a[:, :k].astype(float)
                    if k == 1:
                        n11 = (bk[:, 0] * ak[:, 0]).sum(-1)
                        n10 = (bk[:, 0] * (1 - ak[:, 0])).sum(-1)
                        n01 = ((1 - bk[:, 0]) * ak[:, 0]).sum(-1)
                        lo, hi = stats.newcombe_paired_counts(n11, n10, n01, N_IMAGES - n11 - n10 - n01)
                        acc.setdefault((k, "new"), []).append(_covers(lo, hi, truth))
                        continue
                    lo, hi, _ = stats._seeds_and_images_rows(bk, ak)
                    acc.setdefault((k, "new"), []).append(_covers(lo, hi, truth))
                    acc.setdefault((k, "width"), []).append(hi - lo)
                    tlo, thi = stats._t_rows(ak.mean(-1) - bk.mean(-1))
                    acc.setdefault((k, "t"), []).append(_covers(tlo, thi, truth))
                lo, hi, used = sequential(b.astype(float), a.astype(float))
                acc.setdefault(("seq", "cover"), []).append(_covers(lo, hi, truth))
                acc.setdefault(("seq", "used"), []).append(used)
                wrong = ((lo > 0) & (truth <= 0)) | ((hi < 0) & (truth >= 0))
                acc.setdefault(("seq", "wrong"), []).append(wrong)
                acc.setdefault(("seq", "decided"), []).append((lo > 0) | (hi < 0))
            cat = {key: np.concatenate(v) for key, v in acc.items()}
            row = {"before → after": f"{100 * p_b:g}% → {100 * p_a:g}%", "seed SD (pts)": f"{sd:g}"}
            for k in SHARED_SEEDS:
                row[f"{k} seed{'s' if k > 1 else ''}: new %"] = mc(cat[(k, "new")].mean(), draws)
                if k > 1:
                    row[f"{k} seeds: t over seeds %"] = mc(cat[(k, "t")].mean(), draws)
            row["auto: coverage %"] = mc(cat[("seq", "cover")].mean(), draws)
            row["auto: decided % (wrong sign %)"] = (f"{100 * cat[('seq', 'decided')].mean():.0f} "
                                                     f"({100 * cat[('seq', 'wrong')].mean():.2f})")
            row["auto: mean seeds"] = f"{cat[('seq', 'used')].mean():.2f}"
            rows.append(row)

    # Selection on validation: SELECTION_LRS lrs a recipe, all with the same true accuracy; each recipe's lr is the
    # one with the highest median validation accuracy over its seeds, and the interval is the test split's at the two
    # chosen lrs. The seed effect is shared by a run's validation and test scores, so choosing the luckiest lr on
    # validation carries its luck to test: the winner's curse that fresh seeds (Schmidt et al. 2021) remove.
    for sd in (1.0, 3.0, 7.0):
        recipes = [calibrate(0.60, sd), calibrate(0.70, sd)]
        truth = 0.10
        for k in (2, 3, 5):
            covers, fresh = [], []
            for start in range(0, draws // 2, chunk):
                n = min(chunk, draws // 2 - start)
                x = shared_split(rng, n, k, recipes, lrs=SELECTION_LRS, splits=2)
                val, test = x[0].mean(-1), x[1]  # val: (recipes, lrs, draws, seeds) accuracies
                pick = np.median(val, axis=-1).argmax(axis=1)  # (recipes, draws)
                chosen = [test[r, pick[r], np.arange(n)] for r in range(2)]  # (draws, seeds, n) each
                lo, hi, _ = stats._seeds_and_images_rows(chosen[0].astype(float), chosen[1].astype(float))
                covers.append(_covers(lo, hi, truth))
                # The same lrs re-run with fresh seeds on the same test images: no luck carried over.
                redo = shared_split(rng, n, k, recipes, splits=1)[0, :, 0]
                flo, fhi, _ = stats._seeds_and_images_rows(redo[0].astype(float), redo[1].astype(float))
                fresh.append(_covers(flo, fhi, truth))
            sel_rows.append({"seed SD (pts)": f"{sd:g}", "seeds": k,
                             "chosen on validation: coverage %": mc(np.concatenate(covers).mean(), draws // 2),
                             "fresh seeds at the chosen lrs: coverage %": mc(np.concatenate(fresh).mean(), draws // 2)})
    return rows, sel_rows, checked


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few draws, a few seconds; prints and writes nothing")
    ap.add_argument("--out", type=Path, default=None,
                    help="Markdown file to write (default: benchmarks/results/coverage.md; --quick: none)")
    args = ap.parse_args(argv)
    draws_a, draws_b, draws_c, draws_d = (2_000, 4_000, 200, 500) if args.quick else (200_000, 500_000, 20_000, 4_000)
    out = args.out or (None if args.quick else RESULTS / "coverage.md")

    t0 = time.perf_counter()
    rows_a, checked_a = table_a(draws_a)
    t_a = time.perf_counter() - t0
    rows_b, checked_b = table_b(draws_b)
    t_b = time.perf_counter() - t0 - t_a
    rows_c = table_c(draws_c)
    t_c = time.perf_counter() - t0 - t_a - t_b
    rows_d, rows_sel, checked_d = table_d(draws_d)
    total = time.perf_counter() - t0

    cols_a = list(rows_a[0])
    cols_b = list(rows_b[-1])
    text = "\n".join([
        "# Coverage of the tables' 95% intervals",
        "",
        f"`{command_line('coverage.py', sys.argv[1:] if argv is None else argv)}`",
        "",
        f"{stamp()}; {machine()}; {total:.0f} s ((a) {t_a:.0f} s, (b) {t_b:.0f} s, (c) {t_c:.0f} s, "
        f"(d) {total - t_a - t_b - t_c:.0f} s). "
        "Fixed RNG seeds. Coverage % ± the simulation's own 95% margin. An interval covers when "
        "lo ≤ true Δ ≤ hi; a miss \"below\" is an interval wholly below the truth (it understates "
        "after − before). "
        f"The vectorised forms were checked against the shipped functions on {checked_a + checked_b + checked_d} draws. "
        "What the tables ship: (a) for one seed, labelled as leaving the seed out; (d) for two or more seeds and for "
        "`--seeds auto`. (b) and (c) are the older intervals, kept to show why they were replaced.",
        "",
        f"## (a) One seed a side: `paired_image_interval` ({stats.PAIRED_IMAGES_METHOD}), n = {N_IMAGES}",
        "",
        f"{draws_a:,} simulated 2x2 tables per row. Agreement: 0 = the two runs right or wrong independently, "
        "1 = the most overlap the two accuracies allow (every image the weaker run gets right, the stronger does too; "
        "at 30% → 30% the two runs are the same classifier and Δ is exactly 0). phi (true) is the correlation "
        "of the two runs' right/wrong. 'plain phi': the same interval with the uncorrected phi coefficient; 'unpaired "
        "Newcombe': `stats.newcombe`, which ignores that the images are the same.",
        "",
        md_table(rows_a, cols_a),
        "",
        f"## (b) Several seeds: `seed_t_interval` ({stats.SEED_T_METHOD})",
        "",
        f"{draws_b:,} simulated experiments per row. Each seed's test accuracy: before {100 * BEFORE_ACC:g}% + "
        f"N(0, {100 * BEFORE_SD:g} pts), after {100 * AFTER_ACC:g}% + N(0, {100 * AFTER_SD:g} pts), each plus the "
        f"binomial noise of {N_IMAGES} images; seed i of before paired with seed i of after. Bimodal: after ends at "
        f"{100 * COLLAPSE_ACC:g}% (plus image noise) with probability {COLLAPSE_P:g} per seed; the true Δ is then "
        f"{1 - COLLAPSE_P:g} × {100 * AFTER_ACC:g} + {COLLAPSE_P:g} × {100 * COLLAPSE_ACC:g} − "
        f"{100 * BEFORE_ACC:g} points. 'Collapse seen': at least one of the seeds collapsed, which the tables "
        "report next to the interval.",
        "",
        md_table(rows_b, cols_b),
        "",
        "## (c) The old interval: `paired_bootstrap` (percentile, 10,000 resamples) on (b)'s normal model",
        "",
        f"{draws_c:,} simulated experiments per row, the t interval on the same draws beside it. With 2 seeds the "
        "percentile interval is [min, max] of the two differences, which holds the mean with probability 1/2; "
        "with 3, 1 − 2/2³ = 3/4. That is why the tables no longer use it.",
        "",
        md_table(rows_c, list(rows_c[0])),
        "",
        f"## (d) The case that happens: several seeds on one shared test split, `seeds_and_images_interval` "
        f"({stats.SEEDS_AND_IMAGES_METHOD})",
        "",
        f"{draws_d:,} simulated benchmarks per row. A probit model of a classifier on a population of images: image i "
        f"has a difficulty shared by both recipes (SD {TAU:g}) and a recipe-specific part (SD {OMEGA:g}); a seed shifts "
        "a recipe by a normal effect sized so that its accuracy moves by the row's seed SD (points, SD over seeds). "
        f"The {N_IMAGES} test images are drawn once per benchmark and every seed of both recipes is scored on them. "
        "The truth: the difference of expected accuracies over seeds and images. '1 seed: new' is the one-seed "
        "interval over the images (Newcombe paired), which leaves the seed out: its coverage falls with the seed SD, "
        "which is why every one-seed verdict says 'one seed'. 't over seeds' is the old several-seed interval. "
        f"'auto' is the `--seeds auto` rule: {stats.FIRST_LOOK} seeds, then one more while undecided, up to "
        f"{stats.MAX_SEEDS}, each look at {100 * stats.sequential_confidence():.4g}%; its coverage is that of the "
        "interval at the look that stopped, 'decided' how often a verdict (better/worse) was reached, 'wrong sign' how "
        "often that verdict was wrong (at 95% → 95% every verdict is wrong: the rule's error rate), and the mean "
        "seeds it took per recipe.",
        "",
        md_table(rows_d, list(rows_d[0])),
        "",
        "### Selection on validation",
        "",
        f"{draws_d // 2:,} simulated lr grids per row: {SELECTION_LRS} lrs a recipe (60% and 70%) with equal true "
        "accuracy, so validation's choice among them is pure seed luck; a run's seed effect is the same on its "
        "validation and test scores. The interval is the test split's at the two chosen lrs (each at its best): "
        "luck carried from validation to test would show as undercoverage. Beside it, the same lrs re-run with fresh "
        "seeds (Schmidt et al. 2021's protocol).",
        "",
        md_table(rows_sel, list(rows_sel[0])),
        "",
    ])
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
