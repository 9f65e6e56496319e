"""The before/after table as people read it: the formatted cells (`format_before_after`, and its compact
terminal form), the legend, and the Markdown/CSV files (`save_before_after`). The numbers themselves are
`before_after.py`'s; nothing here computes a statistic."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.files import write_text_atomic
from harness.store import Store
from harness.tables.before_after import before_after, splits_of
from harness.tables.stats import FIRST_LOOK, MAX_SEEDS, sequential_confidence


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.1f}" if pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def _num(v: float, fmt: str = "{:.1f}") -> str:
    return "-" if pd.isna(v) else fmt.format(v)


def format_acc(mean: float, std: float, lo: float, hi: float, median: float = math.nan, low: float = math.nan,
               high: float = math.nan) -> str:
    """An accuracy cell: '83.3 [79.2, 86.8]' for one run (its 95% Wilson interval over the images),
    'mean ± std; median m [min–max]' over seeds, '-' for none."""
    if pd.notna(lo) and pd.notna(mean):
        return f"{mean:.1f} [{lo:.1f}, {hi:.1f}]"
    if pd.notna(std) and pd.notna(median):
        return f"{_pm(mean, std)}; median {median:.1f} [{low:.1f}–{high:.1f}]"
    return _pm(mean, std)


def _acc(r: pd.Series, side: str) -> str:
    return format_acc(*(r.get(f"{side}_acc_{k}", math.nan) for k in ("mean", "std", "lo", "hi", "median", "min", "max")))


def _short_acc(r: pd.Series, side: str) -> str:
    """A terminal cell: one run's accuracy, or the seeds' mean ± std, with no spaces to break at."""
    mean, std = r.get(f"{side}_acc_mean", math.nan), r.get(f"{side}_acc_std", math.nan)
    return "-" if pd.isna(mean) else f"{mean:.1f}" if pd.isna(std) else f"{mean:.1f}±{std:.1f}"


def format_before_after(table: pd.DataFrame, *, terminal: bool = False) -> pd.DataFrame:
    """The table as people read it: 'naive → vit', 'a ± s → b ± s', signed differences. With several
    seeds it adds the collapses (k/n), with an lr axis the lrs compared (each recipe's own, or its best).
    `terminal`: the columns a terminal shows (TERMINAL_COLUMNS), compact enough to read at 100 columns:
    before and after in their own columns, mean ± std (the intervals and medians are in the .md)."""
    seeds = bool(((table["before_runs"] > 1) | (table["after_runs"] > 1)).any()) if len(table) else False
    axis = bool((table["lrs"] == "best").any()) if "lrs" in table and len(table) else False
    split = splits_of(table["split"]) if len(table) else "test"
    by_name = "family" in table and bool(table["family"].fillna("").astype(bool).any())
    rows = []
    for _, r in table.iterrows():
        arrow = lambda a, b: f"{a} → {b}"  # noqa: E731
        row = {"model": r["model"], "recipes": arrow(r["before_recipe"], r["after_recipe"] or "-")}
        if axis:
            row["lr"] = ("each at its own (x1)" if r["lrs"] == "own" else
                         "each at its best on val: " + arrow(_num(r["before_lr"], "{:.3g}"), _num(r["after_lr"], "{:.3g}")))
        row |= {
            "seeds": (f"{r['seeds_paired']} ({r['seeds_why']})"
                      if r.get("seeds_why") and r["before_runs"] == r["after_runs"] == r["seeds_paired"]
                      else arrow(r["before_runs"], r["after_runs"])),
            "batch, updates": f"{_num(r['batch'], '{:.0f}')}, {_num(r['updates'], '{:.0f}')}",
            "test acc %" if split in ("test", "") else "test acc % (val where flagged)": arrow(_acc(r, "before"),
                                                                                             _acc(r, "after")),
        }
        if seeds:
            row["collapsed"] = arrow(f"{r['before_collapsed']}/{r['before_runs']}", f"{r['after_collapsed']}/{r['after_runs']}")
        if by_name:
            row["family (by name: why)"] = r.get("family") or ""
        row |= {
            "Δ [CI]": (_num(r["delta"], "{:+.1f}") + (f" [{r['delta_lo']:+.1f}, {r['delta_hi']:+.1f}]"
                                                          if pd.notna(r["delta_lo"]) else "")),
            "interval": r["interval"] or "",
            "verdict": r["verdict"] or "",
            "best val acc %": arrow(_pm(r["before_best_mean"], r["before_best_std"]), _pm(r["after_best_mean"], r["after_best_std"])),
            "epochs to 90% of best": arrow(_num(r["before_epochs_to_90"]), _num(r["after_epochs_to_90"])),
            "final train–val gap (pts)": arrow(_num(r["before_gap"], "{:+.1f}"), _num(r["after_gap"], "{:+.1f}")),
            "flags": r["flags"] or "",
        }
        if terminal:
            row = {k: row[k] for k in ("model", "recipes", "lr", "seeds") if k in row}
            if axis:  # short: which lrs (the .md says how they were chosen)
                row["lr"] = ("own (x1)" if r["lrs"] == "own" else
                             f"best on val: {_num(r['before_lr'], '{:.2g}')}→{_num(r['after_lr'], '{:.2g}')}")
            row |= {"before %": _short_acc(r, "before"), "after %": _short_acc(r, "after"),
                    "Δ [CI]": (_num(r["delta"], "{:+.1f}") + (f" [{r['delta_lo']:+.1f},{r['delta_hi']:+.1f}]"
                                                              if pd.notna(r["delta_lo"]) else "")),
                    "verdict": r["verdict"] or ""}
        rows.append(row)
    return pd.DataFrame(rows)


TABLE_LEGEND = (
    "Validation chooses, test reports. Test acc in %: the final weights on the held-out test split, which nothing "
    "chooses on (best val acc, the best epoch on validation, is optimistic and shown, never judged). One seed: "
    "[95% Wilson interval over the test images]; several: mean ± sample std, the median [min–max] (the mean of seeds "
    "that split between collapsing and training is no run's result) and the runs that collapsed (test accuracy not "
    "above chance by a one-sided exact binomial test at 1%, diverged or failed) as k/n. Δ = after − before in points "
    "with a paired interval (both recipes see the same test images). Two or more seeds, paired by seed: the seeds' "
    "spread (t over k − 1 degrees of freedom) and the test sample's error, which every seed shares, added in "
    "quadrature (square-and-add, Zou & Donner 2008; the images' term with Agresti & Min's 2005 adjustment); one seed: "
    "Newcombe's (1998) paired interval over the test images (image noise only: the seed's variance is not in it, and "
    "the verdict says one seed). Seeds: how many each comparison took and why. 'fixed': --seeds N. 'decided', 'cap': "
    f"--seeds auto, the default: {FIRST_LOOK} seeds, then one more at a time while the interval holds 0, up to "
    f"{MAX_SEEDS}; each look's interval is at {100 * sequential_confidence():.4g}% so that over its "
    f"{MAX_SEEDS - FIRST_LOOK + 1} looks the verdict errs at most 5% of the time (Bonferroni), and the interval shown "
    "is the last look's. Coverage of each interval was checked by simulation of a shared test split "
    "(benchmarks/results/coverage.md). Verdict: better / worse when the interval excludes 0, else no detectable "
    "difference. With an lr axis, each pair is compared at each recipe's own lr and at each one's best lr in the grid, "
    "chosen on the validation median and reported on test. Batch and updates are per run. Gap = train − val accuracy "
    "at the last epoch, both in eval mode without augmentation. Recipes say their form: published (the source's "
    "values) or fitted (derived for this run's budget).")


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub pipe table (pandas' to_markdown needs the optional tabulate package)."""
    def cell(v: object) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in df.columns) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines) + "\n"


# The columns a terminal shows of the before/after table (the .md/.csv beside it hold every column).
TERMINAL_COLUMNS = ("model", "recipes", "lr", "seeds", "before %", "after %", "Δ [CI]", "verdict")


def save_before_after(store: Store, experiment_id: int, out: Path) -> tuple[Path, Path, pd.DataFrame]:
    """before_after-<id>.md (readable) and .csv (raw numbers) in `out`."""
    table = before_after(store, experiment_id)
    out.mkdir(parents=True, exist_ok=True)
    exp = store.read_sql("SELECT name, description FROM experiments WHERE id = :e", e=int(experiment_id))
    name = exp.iloc[0]["name"] if not exp.empty else f"experiment {experiment_id}"
    md, csv = out / f"before_after-{experiment_id}.md", out / f"before_after-{experiment_id}.csv"
    text = (f"# Before/after: {name} (experiment {experiment_id})\n\n"
            + TABLE_LEGEND + "\n\n"
            + (to_markdown(format_before_after(table)) if not table.empty else "No runs recorded yet.\n"))
    write_text_atomic(md, text)
    write_text_atomic(csv, table.to_csv(index=False))
    return md, csv, table
