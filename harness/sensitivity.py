"""The answer as a curve: accuracy against learning rate, per model x recipe, over seeds; and the recipe
it finds, handed back.

A benchmark grid with an lr axis (`lrs:` / `--lrs`) trains every recipe at several learning rates and
seeds; this module turns those runs into the sensitivity table (one row per model x recipe x lr, and
one summary per model x recipe) that `harness benchmark` prints and `sensitivity-<id>.md/.csv/.html`
show, and picks the recommended recipe per model. It reads through `report` (no SQL of its own) and is
pure pandas.

Validation chooses, test reports (DESIGN.md "Evidence"; Cawley & Talbot, JMLR 2010):
- per lr: the median final *validation* accuracy over seeds (what chooses), and the final weights' *test*
  accuracy (median, min-max) and loss; how many seeds collapsed (test accuracy not above chance by a
  one-sided exact binomial test, `report.beats_chance`) or diverged (NaN/Inf loss); the *danger zone*
  where some seed collapsed or diverged and another trained clear of chance (Schmidt et al. 2021, app. C);
- per recipe: the best lr (the highest validation median; ties: the lower lr) and the test accuracy
  there, and at the grid's edge the lrs to add; the *window*, the lrs whose paired difference from the best
  (by seed, on validation) is within one standard error of that difference (the one-standard-error rule:
  Hastie, Tibshirani & Friedman, ESL 2nd ed., sec. 7.10); the lr of the window farthest from any collapse;
  the *LR sensitivity* of Wortsman et al. (ICLR 2024, sec. 2.2) on the final test loss, only where the
  recipes share one absolute grid of two decades or more (`_shared_sensitivity`); beside it, named for what
  it is, the mean accuracy shortfall from the best over the recipe's own grid;
- per model: the recommended recipe and lr by `RECOMMEND_RULE`, written as a file `harness train --recipe
  FILE` runs (`recommend`, `benchmark.hand_back`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from harness import tables as rep
from harness.files import write_text_atomic
from harness.models import stand_in_label
from harness.store import Store

# Adam at 1e-3 with no batch rule, as users copy it from CNN tutorials (the naive recipe's lr at any batch).
NAIVE_LR = 1e-3
# Harness choice: a seed "trained clear of chance" when its test accuracy is at least this far from chance
# to perfect (a tenth of the way: 19% on 10 classes, 55% on 2) and above chance by the binomial test; a danger
# zone needs such a seed beside a collapsed one, so two seeds that both barely moved (11.7% and 18.9%) are not one.
CLEAR_OF_CHANCE = 0.1
UNFINISHED = rep.UNFINISHED  # runs without a final accuracy that says something about their lr (see `lr_runs`)

CURVE_COLUMNS = ["model", "ran", "stands_for", "recipe", "lr", "lr_point", "lr_mult", "seeds", "val_median", "median",
                 "min", "max", "mean", "loss", "collapsed", "diverged", "danger"]
SUMMARY_COLUMNS = ["model", "recipe", "seeds", "lrs", "own_lr", "best_lr", "best_val", "best_test", "window_lo",
                   "window_hi", "window_decades", "window_gaps", "loss_sensitivity", "shared_lo", "shared_hi",
                   "shared_lrs", "acc_sensitivity", "own_lr_vs_best", "own_lr_where", "naive_lr_where", "best_at_edge",
                   "add_lrs", "safe_lr", "safe_val", "safe_test", "safe_from_bad", "danger_lrs", "collapsed", "diverged"]


def lr_runs(store: Store, experiment_id: int) -> pd.DataFrame:
    """One row per run of an lr axis: `report.run_summary` plus lr_point, own_lr, and, in % (loss in nats):
    `val` (final validation accuracy: chooses), `acc` (test accuracy: reported) and `loss` (final test loss,
    at most ln k); a diverged run at chance (and ln k), an unfinished or failed one NaN. `acc_so_far`: the
    latest validation accuracy whatever the status (a live page's dot). Empty when the grid has no lr axis."""
    runs = rep.read_runs(store, experiment_id)
    if runs.empty:
        return pd.DataFrame()
    s = rep.run_summary(store, runs, rep.read_epochs(store, runs["id"].tolist()))
    tags = runs.set_index("id")["params"].map(lambda p: (p.get("tags") or {}) if isinstance(p, dict) else {})
    for key in ("lr_point", "own_lr"):  # lr and lr_mult come with run_summary
        s[key] = s["run_id"].map(tags.map(lambda t, k=key: t.get(k)))
    s = s[s["lr_point"].notna()].copy()
    if s.empty:
        return s
    s = s.astype({"lr": float, "lr_mult": float, "own_lr": float})
    chance = 100.0 * s["chance"].astype(float)
    uniform = np.log(1.0 / s["chance"].astype(float))  # ln k: the loss of a uniform guess
    s["acc_so_far"] = 100.0 * s["final"]
    s["diverged"] = s["status"] == "diverged"
    s["collapsed"] = s["ends_at_chance"].astype(bool) & ~s["diverged"]
    ok = ~s["diverged"]
    s["val"] = (100.0 * s["final"]).where(ok & s["final"].notna(), chance)
    s["acc"] = (100.0 * s["acc"]).where(ok & s["acc"].notna(), chance)
    s["loss"] = s["test_loss"].clip(upper=uniform).where(ok & s["test_loss"].notna(), uniform)
    # Left out of the curve (not counted at chance): a run still training (a live page) or cut short has no
    # final accuracy yet, and a failed run (an error: out of memory, a bad file) says nothing about its lr.
    s.loc[s["status"].isin(UNFINISHED), ["val", "acc", "loss"]] = float("nan")
    floor = 100.0 * (s["chance"] + CLEAR_OF_CHANCE * (1 - s["chance"]))
    s["clear"] = ~s["collapsed"] & ~s["diverged"] & (s["acc"] >= floor)
    s["model_label"] = [stand_in_label(m, sf or None, short=True) for m, sf in zip(s["model"], s["stands_for"].fillna(""))]
    return s


def curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model x recipe x lr (from `lr_runs`): the seeds' validation median (chooses); their test accuracy's
    median, min, max and mean (%) and median test loss; collapses, divergences, and the danger flag (a seed
    collapsed or diverged while another trained clear of chance)."""
    if runs.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    rows = []
    for (label, recipe, lr), g in runs.groupby(["model_label", "recipe", "lr"], sort=False):
        g = g[g["val"].notna()]
        if g.empty:
            continue
        bad = bool((g["collapsed"] | g["diverged"]).any())
        rows.append({"model": label, "ran": g["model"].iloc[0], "stands_for": g["stands_for"].iloc[0], "recipe": recipe,
                     "lr": lr, "lr_point": g["lr_point"].iloc[0], "lr_mult": g["lr_mult"].iloc[0], "seeds": len(g),
                     "val_median": g["val"].median(), "median": g["acc"].median(), "min": g["acc"].min(),
                     "max": g["acc"].max(), "mean": g["acc"].mean(), "loss": g["loss"].median(),
                     "collapsed": int(g["collapsed"].sum()), "diverged": int(g["diverged"].sum()),
                     "danger": bad and bool(g["clear"].any())})
    return pd.DataFrame(rows, columns=CURVE_COLUMNS).sort_values(["model", "recipe", "lr"], kind="stable",
                                                                 key=_grid_order(runs)).reset_index(drop=True)


def _grid_order(runs: pd.DataFrame):
    """Sort key: models and recipes in the grid's order (first run first), lrs ascending."""
    first = {v: i for i, v in enumerate(dict.fromkeys(runs["model_label"]))}
    first_r = {v: i for i, v in enumerate(dict.fromkeys(runs["recipe"]))}
    return lambda col: col.map(first) if col.name == "model" else col.map(first_r) if col.name == "recipe" else col


def _where(lr: float, lo: float, hi: float, grid_lo: float, grid_hi: float) -> str:
    """Where `lr` sits against a window [lo, hi] on a grid [grid_lo, grid_hi] (a 1% tolerance: lrs
    are products of floats)."""
    if lr < grid_lo * 0.99 or lr > grid_hi * 1.01:
        return "outside the grid"
    if lo * 0.99 <= lr <= hi * 1.01:
        return "in the window"
    return "below the window" if lr < lo else "above the window"


def _paired_se(r: pd.DataFrame, lr: float, best_lr: float) -> tuple[float, float]:
    """(mean, SE) in points of best - this lr on validation, paired by seed (the same seed's two runs): the
    seeds' spread of the per-seed differences over their number, plus the binomial variance of each lr's
    validation accuracy over its images (both scored on the same images; counted as if independent, which
    errs wide). One seed: the images alone."""
    a = r[np.isclose(r["lr"], lr)].dropna(subset=["val"]).drop_duplicates("seed").set_index("seed")["val"] / 100.0
    b = r[np.isclose(r["lr"], best_lr)].dropna(subset=["val"]).drop_duplicates("seed").set_index("seed")["val"] / 100.0
    seeds = [s for s in a.index if s in b.index]
    if not seeds:
        return math.nan, math.nan
    d = b.loc[seeds] - a.loc[seeds]
    n_val = r["n_val"].dropna()
    n = float(n_val.median()) if len(n_val) else math.nan
    pa, pb = float(a.loc[seeds].mean()), float(b.loc[seeds].mean())
    images = (pa * (1 - pa) + pb * (1 - pb)) / n / len(seeds) if n == n else 0.0
    spread = float(d.var(ddof=1)) / len(seeds) if len(seeds) > 1 else 0.0
    return 100.0 * float(d.mean()), 100.0 * math.sqrt(spread + images)


def _distance_to_bad(lr: float, bad: list[float]) -> float:
    """Decades from `lr` to the nearest lr where a seed collapsed or diverged (inf when none did)."""
    return min((abs(math.log10(lr / b)) for b in bad), default=math.inf)


def _beyond_edge(g: pd.DataFrame, best_lr: float) -> list[float]:
    """Two more points past the grid's edge where the best sits, at the grid's own step."""
    lrs = sorted(float(x) for x in g["lr"])
    step = float(np.median(np.diff(np.log10(lrs)))) if len(lrs) > 1 else 0.5
    sign = 1 if math.isclose(best_lr, lrs[-1], rel_tol=0.01) else -1
    return [float(f"{best_lr * 10 ** (sign * step * i):.3g}") for i in (1, 2)]


# Harness choice: Wortsman et al. compare settings over one absolute lr range of three decades (3e-4 to 3e-1 for
# their models); a range under two decades says more about where its ends sit than about sensitivity.
MIN_SHARED_DECADES = 2.0


def _shared_sensitivity(points: pd.DataFrame) -> dict[str, tuple[float, float, float, int]]:
    """Per recipe of one model: (LR sensitivity, range lo, range hi, lrs used) by Wortsman et al.'s definition
    (ICLR 2024, sec. 2.2): over one absolute lr range that every recipe of the model ran at the same points, the
    mean of min(loss(lr), l0) - l*, with l* the recipe's loss at its best lr in that range and l0 the loss a run
    starts from, where a diverged run is counted (`lr_runs` clips losses at ln k and puts a diverged run there).
    NaN where the recipes do not share one grid (a multiplier axis: each recipe's lrs are its own) or the grid
    spans under MIN_SHARED_DECADES decades: no number is given the paper's name that is not its quantity."""
    by = {r: g.sort_values("lr") for r, g in points.groupby("recipe", sort=False)}
    grids = {tuple(f"{x:.6g}" for x in g["lr"]) for g in by.values()}
    lrs = [float(x) for x in next(iter(by.values()))["lr"]]
    shared = len(grids) == 1 and len(lrs) >= 2 and math.log10(max(lrs) / min(lrs)) >= MIN_SHARED_DECADES - 1e-9
    out = {}
    for recipe, g in by.items():
        loss = g["loss"].dropna()
        value = float((loss - loss.min()).mean()) if shared and len(loss) >= 2 else math.nan
        out[recipe] = (value, min(lrs), max(lrs), len(loss) if shared else 0)
    return out


def summarize(points: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per model x recipe, from `curve` rows (and the `lr_runs` rows for chance, the SE and the own lr)."""
    rows = []
    shared = {m: _shared_sensitivity(g) for m, g in points.groupby("model", sort=False)}
    for (label, recipe), g in points.groupby(["model", "recipe"], sort=False):
        g = g.sort_values("lr")
        r = runs[(runs["model_label"] == label) & (runs["recipe"] == recipe)]
        chance = 100.0 * float(r["chance"].astype(float).median())
        best = g.loc[g["val_median"].idxmax()]  # the first of equals: the lower lr
        # The window: the one-standard-error rule (Hastie et al., ESL sec. 7.10) on each lr's paired difference
        # from the best (best - lr, by seed, on validation), within one SE of that difference.
        paired = {float(lr): _paired_se(r, float(lr), float(best["lr"])) for lr in g["lr"]}
        inside = g[[float(lr) == float(best["lr"]) or (paired[float(lr)][0] <= paired[float(lr)][1])
                    for lr in g["lr"]]]
        lo, hi = float(inside["lr"].min()), float(inside["lr"].max())
        # The lr to hand back: of the window's lrs, the farthest (in decades) from any lr where a seed collapsed
        # or diverged; among equals, the higher validation median.
        bad = [float(x) for x in g.loc[(g["collapsed"] > 0) | (g["diverged"] > 0), "lr"]]
        safe = max(inside.itertuples(), key=lambda p: (_distance_to_bad(float(p.lr), bad), p.val_median))
        at_edge = len(g) > 1 and float(best["lr"]) in (g["lr"].min(), g["lr"].max())
        between = g[(g["lr"] >= lo) & (g["lr"] <= hi)]
        own = float(r["own_lr"].median())
        floor = g["median"].clip(lower=chance) if not math.isnan(chance) else g["median"]
        loss_sens, shared_lo, shared_hi, shared_n = shared[label][recipe]
        rows.append({
            "model": label, "recipe": recipe, "seeds": int(g["seeds"].max()), "lrs": len(g), "own_lr": own,
            "best_lr": float(best["lr"]), "best_val": float(best["val_median"]), "best_test": float(best["median"]),
            "window_lo": lo, "window_hi": hi, "window_decades": math.log10(hi / lo),
            "window_gaps": ", ".join(f"{v:.3g}" for v in between.loc[~between.index.isin(inside.index), "lr"]),
            "loss_sensitivity": loss_sens, "shared_lo": shared_lo, "shared_hi": shared_hi, "shared_lrs": shared_n,
            # On accuracy over the recipe's own grid (test medians against their best); one lr is no curve.
            "acc_sensitivity": float((floor.max() - floor).mean()) if len(g) > 1 else math.nan,
            "own_lr_vs_best": own / float(best["lr"]),
            "own_lr_where": _where(own, lo, hi, g["lr"].min(), g["lr"].max()),
            "naive_lr_where": _where(NAIVE_LR, lo, hi, g["lr"].min(), g["lr"].max()),
            "best_at_edge": at_edge, "add_lrs": ", ".join(f"{x:.3g}" for x in _beyond_edge(g, float(best["lr"])))
            if at_edge else "",
            "safe_lr": float(safe.lr), "safe_val": float(safe.val_median), "safe_test": float(safe.median),
            "safe_from_bad": _distance_to_bad(float(safe.lr), bad),
            "danger_lrs": ", ".join(f"{v:.3g}" for v in g.loc[g["danger"], "lr"]),
            "collapsed": f"{int(g['collapsed'].sum())}/{int(g['seeds'].sum())}",
            "diverged": f"{int(g['diverged'].sum())}/{int(g['seeds'].sum())}",
        })
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def sensitivity(store: Store, experiment_id: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(runs, curve, summary) of one experiment's lr axis; three empty frames when it has none."""
    runs = lr_runs(store, experiment_id)
    points = curve(runs)
    return runs, points, summarize(points, runs) if not points.empty else pd.DataFrame(columns=SUMMARY_COLUMNS)


RECOMMEND_RULE = (
    "validation chooses: the recipe with the highest best-lr validation median (recipes within half a validation "
    "image of it are tied, and the tie goes to the wider window); then, of that recipe's window (the lrs within one "
    "standard error of the best by their paired difference: the one-standard-error rule, Hastie et al., ESL sec. "
    "7.10), the lr farthest from any lr where a seed collapsed or diverged (Schmidt et al. 2021's danger zone), "
    "the higher validation median among equals")


def recommend(runs: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per model, by `RECOMMEND_RULE` (validation only; test is reported beside it, not used): the chosen
    recipe's summary row with `lr` (its safe lr: `safe_lr`), `tied` (the recipes tied with it), and `run_ids`,
    the finished runs of that recipe at that lr (their stored recipe is the one to hand back)."""
    rows = []
    for _, g in summary.groupby("model", sort=False):
        top = g["best_val"].max()
        r = runs[runs["model_label"] == g["model"].iloc[0]]
        n_val = float(r["n_val"].dropna().median()) if r["n_val"].notna().any() else math.inf
        tied = g[g["best_val"] >= top - 50.0 / n_val]  # half an image, in points
        best = tied.loc[tied["window_decades"].idxmax()]
        mine = r[(r["recipe"] == best["recipe"]) & np.isclose(r["lr"], best["safe_lr"]) & r["val"].notna()]
        rows.append({**best.to_dict(), "tied": [x for x in tied["recipe"] if x != best["recipe"]],
                     "run_ids": mine["run_id"].astype(int).tolist()})
    return pd.DataFrame(rows)


def _ratio(x: float) -> str:
    """'at the best', '10x below the best', '3.2x above the best'."""
    if math.isclose(x, 1.0, rel_tol=0.01):
        return "at the best"
    return f"{1 / x:.3g}x below the best" if x < 1 else f"{x:.3g}x above the best"


def format_curve(points: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "model": p["model"], "recipe": p["recipe"], "lr": f"{p['lr']:.3g}", "point": p["lr_point"],
        "val % (median: chooses)": f"{p['val_median']:.1f}",
        "test % median [min–max]": f"{p['median']:.1f} [{p['min']:.1f}–{p['max']:.1f}]",
        "test loss": "-" if pd.isna(p["loss"]) else f"{p['loss']:.3f}",
        "collapsed": f"{p['collapsed']}/{p['seeds']}", "diverged": f"{p['diverged']}/{p['seeds']}",
        "danger zone": "seeds disagree" if p["danger"] else "",
    } for _, p in points.iterrows()])


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    def window(s: pd.Series) -> str:
        text = (f"{s['window_lo']:.3g}–{s['window_hi']:.3g} ({s['window_decades']:.2f} dec)"
                if s["window_hi"] > s["window_lo"] else f"{s['window_lo']:.3g} only")
        return text + (f"; not {s['window_gaps']}" if s["window_gaps"] else "")

    return pd.DataFrame([{
        "model": s["model"], "recipe": s["recipe"], "seeds x lrs": f"{s['seeds']} x {s['lrs']}",
        "best lr on val (val %)": f"{s['best_lr']:.3g} ({s['best_val']:.1f})" + (
            f" at the edge: add {s['add_lrs']}" if s["best_at_edge"] else ""),
        "test % there": f"{s['best_test']:.1f}",
        "window (1 SE, paired)": window(s),
        "recommended lr": (f"{s['safe_lr']:.3g}" + ("" if math.isinf(s["safe_from_bad"]) else
                                                    f" ({s['safe_from_bad']:.2g} dec from a collapse)")),
        "LR sensitivity (Wortsman, test loss)": ("-" if pd.isna(s["loss_sensitivity"]) else
                                                 f"{s['loss_sensitivity']:.3f} over {s['shared_lo']:.3g}–{s['shared_hi']:.3g}"),
        "mean shortfall from best (acc pts, own grid)": "-" if pd.isna(s["acc_sensitivity"]) else f"{s['acc_sensitivity']:.1f}",
        "own lr": f"{s['own_lr']:.3g}: {_ratio(s['own_lr_vs_best'])}, {s['own_lr_where']}",
        f"naive lr {NAIVE_LR:g}": s["naive_lr_where"],
        "collapsed, diverged": f"{s['collapsed']}, {s['diverged']}",
        "danger zone (lrs)": s["danger_lrs"] or "-",
    } for _, s in summary.iterrows()])


LEGEND = (
    "Validation chooses, test reports. Per lr (the peak lr at the run's batch; the lr axis scales each recipe's whole "
    "schedule), over seeds: the median final validation accuracy (what chooses the best lr), and the final weights' "
    "test accuracy in % (median [min–max]) and test loss. Collapsed = test accuracy not above chance by a one-sided "
    f"exact binomial test at {rep.COLLAPSE_ALPHA:g}; diverged = NaN/Inf loss, counted at chance and at ln k (a failed "
    "or unfinished run is left out: an error says nothing about the lr). Danger zone: an lr where a seed collapsed or "
    f"diverged while another trained clear of chance (a tenth of the way from chance to 100% or more; Schmidt et al. "
    "2021, app. C): one run there says nothing. Best lr: the highest validation median (ties: the lower lr), its test "
    "median beside it; at the grid's edge, the lrs to add. Window: the lrs whose paired difference from the best "
    "(best − lr on validation, seed by seed) is within one standard error of that difference (the one-standard-error "
    "rule, Hastie et al., ESL sec. 7.10; SE² = the per-seed differences' variance / seeds + each lr's binomial "
    "variance over the validation images / seeds), a range and its width in decades ('not' lists lrs inside the range "
    "that fall out). Recommended lr: of the window, the lr farthest (in decades) from any lr where a seed collapsed or "
    "diverged, the higher validation median among equals; the recipe handed back is the one with the highest best "
    "validation median, recipes within half a validation image of it tied and the tie given to the wider window. "
    "LR sensitivity (Wortsman et al., ICLR 2024, sec. 2.2) on the final test loss: over one absolute lr range every "
    f"recipe of the model ran at the same points, spanning at least {MIN_SHARED_DECADES:g} decades, the mean of "
    "min(loss, l0) − l*, l* the recipe's loss at its best lr there, a diverged run counted at l0; l0 is ln k, the loss "
    "of a uniform guess (the paper uses the loss measured at initialisation, which harness does not record); '-' "
    "without such a range (a multiplier axis: use --lrs 1e-4,3e-4,...). Mean shortfall from best: over the recipe's "
    "own grid, best − max(test median, chance), in points; not Wortsman's quantity. Read both with the curve: a recipe "
    f"that never trains has none. Own lr: the recipe's fitted lr, against the best; naive lr: Adam {NAIVE_LR:g}, the "
    "CNN tutorials' setting.")


def save_sensitivity(store: Store, experiment_id: int, out: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """sensitivity-<id>.md (both tables, readable) and .csv (the curve's raw numbers with the summary's
    columns per recipe) in `out`; nothing when the experiment has no lr axis."""
    runs, points, summary = sensitivity(store, experiment_id)
    if points.empty:
        return runs, points, summary
    out.mkdir(parents=True, exist_ok=True)
    text = (f"# LR sensitivity (experiment {experiment_id})\n\n{LEGEND}\n\n## Per recipe\n\n"
            + rep.to_markdown(format_summary(summary)) + "\n## Per learning rate\n\n" + rep.to_markdown(format_curve(points)))
    write_text_atomic(out / f"sensitivity-{experiment_id}.md", text)
    merged = points.merge(summary.drop(columns=["seeds", "collapsed", "diverged"]), on=["model", "recipe"], how="left")
    write_text_atomic(out / f"sensitivity-{experiment_id}.csv", merged.to_csv(index=False))
    return runs, points, summary
