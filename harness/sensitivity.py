"""The answer as a curve: final accuracy against learning rate, per model x recipe, over seeds.

A benchmark grid with an lr axis (`lrs:` / `--lrs`) trains every recipe at several learning rates and
seeds; this module turns those runs into the sensitivity table (one row per model x recipe x lr, and
one summary per model x recipe) that `harness benchmark` prints and `sensitivity-<id>.md/.csv/.html`
show. It reads through `report.py` (no SQL of its own) and is pure pandas.

The measures, from ../shared/DESIGN.md "Evidence":
- per lr: the median final val acc over seeds with its min-max, how many seeds collapsed (ended at
  chance: `report.CHANCE_MARGIN`) or diverged (NaN/Inf loss), and the *danger zone* flag where seeds
  disagree (some collapse or diverge, some train: Schmidt et al. 2021, app. C);
- per recipe: the best lr (highest median), the *window* (the lrs whose median is within
  `WINDOW_POINTS` of the best) as a range and in decades, and the *LR sensitivity* of Wortsman et al.
  (ICLR 2024, sec. 2.2) on accuracy: the mean over the grid of best - max(acc(lr), chance), in points,
  a diverged or failed run counted at chance (their "diverged run counted at its initial loss");
- where the recipe's own lr and seed 000's naive lr (Adam 1e-3) fall against that window.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness import report as rep
from harness.files import write_text_atomic
from harness.models import stand_in_label
from harness.store import Store

# Harness choice: an lr "trains as well as the best" when its median final accuracy is within this
# many points of the best median: about the 95% binomial half-width on a few hundred validation images
# (digits' 359: +-4.6 points at 70%), so the window holds the lrs the data cannot tell from the best.
WINDOW_POINTS = 5.0
# Seed 000's "CNN settings": Adam at 1e-3 with no batch rule (the naive recipe's lr at any batch).
NAIVE_LR = 1e-3
# Runs without a final accuracy that says something about their lr (see `lr_runs`).
UNFINISHED = ("running", "interrupted", "time_limit", "stopped", "failed")

CURVE_COLUMNS = ["model", "ran", "stands_for", "recipe", "lr", "lr_point", "lr_mult", "seeds", "median", "min", "max",
                 "mean", "collapsed", "diverged", "danger"]
SUMMARY_COLUMNS = ["model", "recipe", "seeds", "lrs", "own_lr", "best_lr", "best_median", "window_lo", "window_hi",
                   "window_decades", "window_gaps", "lr_sensitivity", "own_lr_vs_best", "own_lr_where", "naive_lr_where",
                   "best_at_edge", "danger_lrs", "collapsed", "diverged"]


def lr_runs(store: Store, experiment_id: int) -> pd.DataFrame:
    """One row per run of an lr axis: `report.run_summary` plus lr, lr_point, lr_mult, own_lr and acc
    (final val acc in %: a diverged run at chance, an unfinished or failed one NaN) and acc_so_far. Empty
    when the grid has no lr axis."""
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
    s["acc_so_far"] = 100.0 * s["final"]  # the latest epoch's, whatever the status (a live page's dot)
    s["diverged"] = s["status"] == "diverged"
    s["collapsed"] = s["ends_at_chance"].astype(bool) & ~s["diverged"]
    s["acc"] = s["acc_so_far"].where(~s["diverged"] & s["final"].notna(), chance)
    # Left out of the curve (not counted at chance): a run still training (a live page) or cut short has no
    # final accuracy yet, and a failed run (an error: out of memory, a bad file) says nothing about its lr.
    s.loc[s["status"].isin(UNFINISHED), "acc"] = float("nan")
    s["model_label"] = [stand_in_label(m, sf or None, short=True) for m, sf in zip(s["model"], s["stands_for"].fillna(""))]
    return s


def curve(runs: pd.DataFrame) -> pd.DataFrame:
    """Per model x recipe x lr (from `lr_runs`): the seeds' median, min, max and mean (%), collapses,
    divergences, and the danger flag (seeds disagree: some collapsed or diverged, some trained)."""
    if runs.empty:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    rows = []
    for (label, recipe, lr), g in runs.groupby(["model_label", "recipe", "lr"], sort=False):
        g = g[g["acc"].notna()]
        if g.empty:
            continue
        bad = int(g["collapsed"].sum() + g["diverged"].sum())
        rows.append({"model": label, "ran": g["model"].iloc[0], "stands_for": g["stands_for"].iloc[0], "recipe": recipe,
                     "lr": lr, "lr_point": g["lr_point"].iloc[0], "lr_mult": g["lr_mult"].iloc[0], "seeds": len(g),
                     "median": g["acc"].median(), "min": g["acc"].min(), "max": g["acc"].max(), "mean": g["acc"].mean(),
                     "collapsed": int(g["collapsed"].sum()), "diverged": int(g["diverged"].sum()),
                     "danger": 0 < bad < len(g)})
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


def summarize(points: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per model x recipe, from `curve` rows (and the `lr_runs` rows for chance and the own lr)."""
    rows = []
    for (label, recipe), g in points.groupby(["model", "recipe"], sort=False):
        g = g.sort_values("lr")
        r = runs[(runs["model_label"] == label) & (runs["recipe"] == recipe)]
        chance = 100.0 * float(r["chance"].astype(float).median())
        best = g.loc[g["median"].idxmax()]
        inside = g[g["median"] >= best["median"] - WINDOW_POINTS]
        lo, hi = float(inside["lr"].min()), float(inside["lr"].max())
        between = g[(g["lr"] >= lo) & (g["lr"] <= hi)]
        own = float(r["own_lr"].median())
        floor = g["median"].clip(lower=chance) if not math.isnan(chance) else g["median"]
        rows.append({
            "model": label, "recipe": recipe, "seeds": int(g["seeds"].max()), "lrs": len(g), "own_lr": own,
            "best_lr": float(best["lr"]), "best_median": float(best["median"]), "window_lo": lo, "window_hi": hi,
            "window_decades": math.log10(hi / lo),
            "window_gaps": ", ".join(f"{v:.3g}" for v in between.loc[~between.index.isin(inside.index), "lr"]),
            # One lr is no curve: its sensitivity is undefined, not zero.
            "lr_sensitivity": float((best["median"] - floor).mean()) if len(g) > 1 else math.nan,
            "own_lr_vs_best": own / float(best["lr"]),
            "own_lr_where": _where(own, lo, hi, g["lr"].min(), g["lr"].max()),
            "naive_lr_where": _where(NAIVE_LR, lo, hi, g["lr"].min(), g["lr"].max()),
            "best_at_edge": len(g) > 1 and float(best["lr"]) in (g["lr"].min(), g["lr"].max()),
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


def _ratio(x: float) -> str:
    """'at the best', '10x below the best', '3.2x above the best'."""
    if math.isclose(x, 1.0, rel_tol=0.01):
        return "at the best"
    return f"{1 / x:.3g}x below the best" if x < 1 else f"{x:.3g}x above the best"


def format_curve(points: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "model": p["model"], "recipe": p["recipe"], "lr": f"{p['lr']:.3g}", "point": p["lr_point"],
        "median final val acc % [min–max]": f"{p['median']:.1f} [{p['min']:.1f}–{p['max']:.1f}]",
        "collapsed": f"{p['collapsed']}/{p['seeds']}", "diverged": f"{p['diverged']}/{p['seeds']}",
        "danger zone": "seeds disagree" if p["danger"] else "",
    } for _, p in points.iterrows()])


def format_summary(summary: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([{
        "model": s["model"], "recipe": s["recipe"], "seeds x lrs": f"{s['seeds']} x {s['lrs']}",
        "best lr (median %)": f"{s['best_lr']:.3g} ({s['best_median']:.1f})" + (" at the grid's edge" if s["best_at_edge"] else ""),
        f"window (within {WINDOW_POINTS:g} pts)": ((f"{s['window_lo']:.3g}–{s['window_hi']:.3g} ({s['window_decades']:.2f} decades)"
                                                    if s["window_hi"] > s["window_lo"] else f"{s['window_lo']:.3g} only")
                                                   + (f"; not at {s['window_gaps']}" if s["window_gaps"] else "")),
        "LR sensitivity (pts)": "-" if pd.isna(s["lr_sensitivity"]) else f"{s['lr_sensitivity']:.1f}",
        "own lr": f"{s['own_lr']:.3g}: {_ratio(s['own_lr_vs_best'])}, {s['own_lr_where']}",
        f"naive lr {NAIVE_LR:g}": s["naive_lr_where"],
        "collapsed, diverged": f"{s['collapsed']}, {s['diverged']}",
        "danger zone (lrs)": s["danger_lrs"] or "-",
    } for _, s in summary.iterrows()])


LEGEND = (
    "Final validation accuracy in % against the learning rate (the peak lr at the run's batch; the lr axis scales each "
    "recipe's whole schedule), over seeds: the median with its min–max. Collapsed = ended at chance (below "
    f"{rep.CHANCE_MARGIN:g} x 1/classes); diverged = NaN/Inf loss, counted at chance (a failed or unfinished run is left "
    "out: an error says nothing about the lr). Danger zone: an "
    "lr where some seeds collapse or diverge and others train (Schmidt et al. 2021): one run there says nothing. "
    f"Window: the lrs whose median is within {WINDOW_POINTS:g} points of the best (a range, and its width in decades; "
    "'not at' lists lrs inside the range that fall below). LR sensitivity (Wortsman et al. 2024, sec. 2.2, on "
    "accuracy): the mean over the grid of best − max(median, chance), in points; read it with the curve (a recipe "
    f"that never trains has none; one lr has none to give). Own lr: the recipe's fitted lr, against the best; naive lr: seed 000's Adam "
    f"{NAIVE_LR:g}. A best at the grid's edge means the window may extend past the grid.")


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
