"""The tables: a run's summary, the before/after table of a benchmark (each pair with its interval and
verdict), the ablation ladder's table, their text / Markdown / CSV forms. Pure functions of the rows:
the same database always gives the same table, whoever wrote it (a finished benchmark, a sweep killed
halfway, a single `harness train`).

Validation chooses, test reports: a run's reported accuracy is its final weights' on the test split
(`runs.test_acc`), which nothing in harness chooses on; the lr of "each at its best" is chosen on the
validation median. A run whose data has no test split (a plugin's set) is reported on validation, and
the table says so."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.errors import UserError
from harness.models import stand_in_label
from harness.store import Store
from harness.tables.read import read_epochs, read_evaluation_sizes, read_runs, read_test_correct
from harness.tables.stats import (
    CONFIDENCE,
    DATASET_CLASSES,
    MAX_SEEDS,
    NEAR_BEST,
    PAIRED_IMAGES_METHOD,
    SEED_T_METHOD,
    SEEDS_AND_IMAGES_METHOD,
    beats_chance,
    newcombe,
    paired_image_interval,
    seed_t_interval,
    seeds_and_images_interval,
    sequential_confidence,
    verdict,
    wilson,
)


def _from_spec(params: object) -> tuple[int | None, object, object]:
    """(classes, batch size, optimizer updates) as a run's stored spec states them (NaN when it does not).
    Classes: the registered dataset's size, else the spec's `num_classes` field."""
    params = params if isinstance(params, dict) else {}
    data, recipe = params.get("data") or {}, params.get("recipe") or {}
    k = DATASET_CLASSES.get(data.get("name"), data.get("num_classes"))
    k = int(k) if isinstance(k, (int, float)) and k >= 2 else None
    epochs_run, train_n, batch = params.get("epochs"), params.get("train_images"), recipe.get("batch_size")
    updates = (epochs_run * max(1, train_n // min(batch, train_n))
               if isinstance(train_n, int) and isinstance(batch, int) and isinstance(epochs_run, int) else math.nan)
    return k, batch if isinstance(batch, int) else math.nan, updates


# --- per-run summary ----------------------------------------------------------------------------

RUN_SUMMARY_COLUMNS = ["run_id", "label", "model", "stands_for", "recipe", "seed", "status", "best", "final", "n_val",
                       "test", "test_loss", "n_test", "acc", "acc_lo", "acc_hi", "n_acc", "acc_split", "batch", "updates",
                       "epochs_to_90", "gap", "chance", "at_chance", "ends_at_chance", "lr", "lr_mult", "seed_rule"]


def run_summary(store: Store, runs: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per run: best/final val acc (val chooses), the reported accuracy `acc` (the final weights
    on the test split; on validation where the data has none, `acc_split` says which) with its Wilson
    interval over those images, epochs to reach 90% of the best, final train-val gap (points), chance
    level and whether the run beat it (a one-sided binomial test: `stats.beats_chance`)."""
    if runs.empty:
        return pd.DataFrame(columns=RUN_SUMMARY_COLUMNS)
    s = runs.rename(columns={"id": "run_id", "best_val_acc": "best", "final_val_acc": "final"})
    s = s.rename(columns={"test_acc": "test"})
    s = s.astype({"best": float, "final": float, "test": float, "test_loss": float, "n_test": float})  # NULLs read as None
    s = s.merge(read_evaluation_sizes(store, s["run_id"].tolist()), on="run_id", how="left")

    # From the epochs: the first epoch at NEAR_BEST of the run's best, and the last epoch's gap.
    ep = epochs[epochs["run_id"].isin(s["run_id"])].sort_values(["run_id", "epoch"])
    ep = ep.astype({"train_acc": float, "val_acc": float})
    best = ep["run_id"].map(s.set_index("run_id")["best"])
    ep = ep.assign(near=ep["epoch"].where((best > 0) & (ep["val_acc"] >= NEAR_BEST * best)),
                   gap=100.0 * (ep["train_acc"] - ep["val_acc"]))
    per_run = ep.groupby("run_id").agg(epochs_to_90=("near", "min"),
                                       gap=("gap", lambda g: g.iloc[-1]))  # the last epoch's, even if NaN
    s = s.merge(per_run.astype(float).reset_index(), on="run_id", how="left")

    k_spec, s["batch"], s["updates"] = zip(*s["params"].map(_from_spec))
    k = s["eval_classes"].where(s["eval_classes"] > 0, pd.Series(k_spec, index=s.index, dtype=float))
    s["chance"] = 1.0 / k  # NaN when the class count is unknown
    s["n_val"] = s["n_val"].where(s["n_val"] > 0)
    on_test = s["test"].notna()
    s["acc"] = s["test"].where(on_test, s["final"])
    s["n_acc"] = s["n_test"].where(on_test, s["n_val"])
    s["acc_split"] = np.where(on_test, "test", np.where(s["final"].notna(), "val", ""))
    s["acc_lo"], s["acc_hi"] = zip(*(wilson(a * n, int(n)) if pd.notna(n) and pd.notna(a) else (math.nan, math.nan)
                                     for a, n in zip(s["acc"], s["n_acc"])))
    # A run with no finished epoch has no accuracy to judge (its status says why). Both the best
    # epoch (on val) and the end (the reported accuracy) are judged: a run can rise once and collapse after.
    s["at_chance"] = [not _above_chance(a, n, c) for a, n, c in zip(s["best"], s["n_val"], s["chance"])]
    s["ends_at_chance"] = [not _above_chance(a, n, c) for a, n, c in zip(s["acc"], s["n_acc"], s["chance"])]
    # Where the run sits on a grid's lr axis (NaN without one): its peak lr and the multiple of its recipe's own.
    tags = s["params"].map(lambda p: (p.get("tags") or {}) if isinstance(p, dict) else {})
    s["lr"] = tags.map(lambda t: t.get("lr", math.nan)).astype(float)
    s["lr_mult"] = tags.map(lambda t: t.get("lr_mult", math.nan)).astype(float)
    # "auto": the run belongs to a `--seeds auto` grid, whose looks are judged at the sequential level.
    s["seed_rule"] = tags.map(lambda t: t.get("seed_rule", "fixed"))
    return s[RUN_SUMMARY_COLUMNS]


def _above_chance(acc: float, n: float, chance: float) -> bool:
    """Whether an accuracy on n images is above chance by `stats.beats_chance`; True when unknown (no
    accuracy, images or class count): a run is only called collapsed on evidence."""
    if any(pd.isna(v) for v in (acc, n, chance)) or n <= 0:
        return True
    return beats_chance(int(round(acc * n)), int(n), int(round(1 / chance)))


# --- the before/after table ---------------------------------------------------------------------

TABLE_COLUMNS = [
    "model", "ran", "stands_for", "family", "before_recipe", "after_recipe", "lrs", "chosen_on", "before_lr", "after_lr",
    "before_runs", "after_runs", "batch", "updates", "split", "n_images", "before_best_mean", "before_best_std",
    "after_best_mean", "after_best_std", "delta_best", "before_acc_mean", "before_acc_std", "before_acc_lo",
    "before_acc_hi", "before_acc_median", "before_acc_min", "before_acc_max", "before_collapsed",
    "after_acc_mean", "after_acc_std", "after_acc_lo", "after_acc_hi",
    "after_acc_median", "after_acc_min", "after_acc_max", "after_collapsed", "delta",
    "delta_lo", "delta_hi", "interval", "verdict", "seeds_paired", "seed_rule", "seeds_why",
    "before_epochs_to_90", "after_epochs_to_90", "before_gap", "after_gap", "flags",
]


def _flags(side: pd.DataFrame, recipe: str) -> list[str]:
    out = []
    n = len(side)
    for status in ("diverged", "failed", "interrupted", "running", "time_limit", "stopped"):
        k = int((side["status"] == status).sum())
        if k:
            out.append(f"{recipe}: {k}/{n} {status}")
    k = int(side["at_chance"].sum())
    if k:
        out.append(f"{recipe}: {k}/{n} never beat chance")
    k = int((side["ends_at_chance"] & ~side["at_chance"]).sum())
    if k:
        out.append(f"{recipe}: {k}/{n} ended at chance")
    k = int((side["acc_split"] == "val").sum())
    if k:
        out.append(f"{recipe}: {k}/{n} reported on validation (no test split)")
    return out


def _one(values: pd.Series) -> float:
    """The value shared by a side's runs (batch, updates, val size), or NaN when they differ or are missing."""
    v = values.dropna().unique()
    return float(v[0]) if len(v) == 1 else math.nan


def compare(before: pd.DataFrame, after: pd.DataFrame, correct: dict[int, np.ndarray] | None = None, *,
            confidence: float = CONFIDENCE) -> dict[str, object]:
    """The interval of after - before (the reported accuracy, points) and its verdict, from two sets of
    `run_summary` rows (the before/after table, the ablation ladder and `--seeds auto`'s looks all judge with
    it). Both sides were scored on the same images, so the interval is paired:

    - the same seeds on both sides, two or more, with each run's per-image results (`correct`: run id -> bools,
      `read_test_correct`): `seeds_and_images_interval`, which carries the seeds' spread and the test sample's
      error together (every seed is scored on the same images, so t over seeds alone misses the second);
    - the same, without per-image results (a plugin's data with no test split): t over seeds, labelled as
      leaving the images out; seeds that all moved by exactly the same amount give no interval;
    - one run a side: Newcombe's paired interval over the test images; it leaves the seed's variance out, and
      the verdict says "one seed";
    - one run a side without per-image results: Newcombe's unpaired interval of two proportions, labelled so.
    `confidence`: the level (`--seeds auto` looks at a higher one, `stats.sequential_confidence`). Coverage of
    each is checked by simulation (tests/test_stats.py, benchmarks/coverage.py)."""
    out: dict[str, object] = {"delta_lo": math.nan, "delta_hi": math.nan, "interval": "", "verdict": "", "one_seed": False,
                              "paired_seeds": 0}
    b, a = before.dropna(subset=["acc"]), after.dropna(subset=["acc"])
    if b.empty or a.empty:
        return out
    b1, a1 = b.drop_duplicates("seed").set_index("seed"), a.drop_duplicates("seed").set_index("seed")
    seeds = [s for s in b1.index if s in a1.index]
    correct = correct or {}
    level = f"{100 * confidence:.4g}%"
    if len(seeds) >= 2:
        ids = [(int(b1.loc[s, "run_id"]), int(a1.loc[s, "run_id"])) for s in seeds]
        whole = all(x in correct and y in correct for x, y in ids) and len({len(correct[i]) for p in ids for i in p}) == 1
        if whole:
            lo, hi, _ = seeds_and_images_interval(np.stack([correct[x] for x, _ in ids]),
                                                  np.stack([correct[y] for _, y in ids]), confidence=confidence)
            out["interval"] = f"{SEEDS_AND_IMAGES_METHOD}, {level}: {len(seeds)} seeds x {len(correct[ids[0][1]])} test images"
        else:
            lo, hi = seed_t_interval(b1.loc[seeds, "acc"].tolist(), a1.loc[seeds, "acc"].tolist(), confidence=confidence)
            out["interval"] = (f"{SEED_T_METHOD}, {level}: {len(seeds)} seeds on {_images(a)} "
                               "(no per-image results: the test sample's own error is not in it)")
        out["paired_seeds"] = len(seeds)
    elif len(b) == 1 and len(a) == 1:
        rb, ra = int(b["run_id"].iloc[0]), int(a["run_id"].iloc[0])
        if rb in correct and ra in correct and len(correct[rb]) == len(correct[ra]):
            lo, hi = paired_image_interval(correct[rb], correct[ra])
            out["interval"] = f"{PAIRED_IMAGES_METHOD}: {len(correct[ra])} test images, one seed (seed variance not in it)"
        elif pd.notna(b["n_acc"].iloc[0]) and pd.notna(a["n_acc"].iloc[0]):
            lo, hi = newcombe(b["acc"].iloc[0], int(b["n_acc"].iloc[0]), a["acc"].iloc[0], int(a["n_acc"].iloc[0]))
            out["interval"] = (f"Newcombe (1998), unpaired: {int(a['n_acc'].iloc[0])} {a['acc_split'].iloc[0]} images, "
                               "one seed (seed variance not in it)")
        else:
            return out
        out["one_seed"], out["paired_seeds"] = True, 1
    else:
        return out
    lo, hi = max(lo, -1.0), min(hi, 1.0)  # a difference of two accuracies lies in [-1, 1]
    out.update(delta_lo=100 * lo, delta_hi=100 * hi, verdict=verdict(lo, hi))
    return out


def group_decided(db: str, experiment_id: int, trial_ids: list[str]) -> bool:
    """One look of `--seeds auto` (the engine's `SequentialSeeds` asks it when a model's launched runs have all
    finished): whether every comparison of the model's recipes against its baseline has an interval, at the
    sequential level, that excludes 0, over two or more seeds. Reads the finished runs by their Ray trial ids;
    nothing to compare (one recipe) is decided."""
    from harness.tables.read import open_reader

    store = open_reader(db)
    try:
        runs = read_runs(store, experiment_id)
        runs = runs[runs["trial_id"].isin(trial_ids)]
        if runs.empty:
            return True
        summary = run_summary(store, runs, read_epochs(store, runs["id"].tolist()))
        correct = read_test_correct(store, runs["id"].tolist())
    finally:
        store.close()
    recipes = list(dict.fromkeys(summary["recipe"]))
    baseline = "naive" if "naive" in recipes else recipes[0]
    base = summary[summary["recipe"] == baseline]
    looks = (compare(base, summary[summary["recipe"] == other], correct, confidence=sequential_confidence())
             for other in recipes if other != baseline)
    # One seed is never a decision under the rule: its interval leaves the seed's variance out.
    return all(c["paired_seeds"] >= 2 and c["verdict"] in ("better", "worse") for c in looks)


def splits_of(labels: pd.Series) -> str:
    """The splits some accuracies were reported on, as one label: 'test', 'val' or 'test+val' ('' for none);
    `labels` are per-run `acc_split`s or already joined labels."""
    return "+".join(sorted(set("+".join(labels.fillna("")).split("+")) - {""}))


def _images(side: pd.DataFrame) -> str:
    n, split = _one(side["n_acc"]), splits_of(side["acc_split"]) or "no"
    return f"{n:.0f} {split} images" if pd.notna(n) else f"{split} images"


def _collapsed(side: pd.DataFrame) -> int:
    """Runs that ended at chance or diverged/failed: a run that did not train, whatever the reason."""
    return int((side["ends_at_chance"] | side["status"].isin(["diverged", "failed"])).sum())


def _comparison(label: dict, baseline: str, other: str | None, before: pd.DataFrame, after: pd.DataFrame,
                lrs: str, correct: dict[int, np.ndarray]) -> dict:
    """One row of the before/after table: `before` (the baseline's runs) against `after` (another recipe's)."""
    both = pd.concat([before, after])
    row = {**label, "before_recipe": baseline, "after_recipe": other, "lrs": lrs,
           "chosen_on": "val median" if lrs == "best" else "", "before_lr": _one(before["lr"]), "after_lr": _one(after["lr"]),
           "before_runs": len(before), "after_runs": len(after), "batch": _one(both["batch"]),
           "updates": _one(both["updates"]), "split": splits_of(both["acc_split"]),
           "n_images": _one(both["n_acc"])}
    for side, df in (("before", before), ("after", after)):
        for metric, col in (("best", "best"), ("acc", "acc")):
            vals = 100.0 * df[col].astype(float)
            row[f"{side}_{metric}_mean"] = vals.mean() if vals.notna().any() else math.nan
            row[f"{side}_{metric}_std"] = vals.std(ddof=1) if vals.notna().sum() > 1 else math.nan
        # Several seeds: the mean of a bimodal set (some collapse, some train) is no run's result, so the
        # median, the min-max and the collapses stand next to it.
        accs = 100.0 * df["acc"].astype(float)
        row[f"{side}_acc_median"], row[f"{side}_acc_min"], row[f"{side}_acc_max"] = (
            (accs.median(), accs.min(), accs.max()) if accs.notna().any() else (math.nan,) * 3)
        row[f"{side}_collapsed"] = _collapsed(df)
        # One run: its binomial interval over the images; several: the spread of the seeds says more.
        one = len(df) == 1
        row[f"{side}_acc_lo"] = 100 * df["acc_lo"].iloc[0] if one else math.nan
        row[f"{side}_acc_hi"] = 100 * df["acc_hi"].iloc[0] if one else math.nan
        row[f"{side}_epochs_to_90"] = df["epochs_to_90"].astype(float).mean() if len(df) else math.nan
        row[f"{side}_gap"] = df["gap"].astype(float).mean() if len(df) else math.nan
    row["delta_best"] = row["after_best_mean"] - row["before_best_mean"]
    row["delta"] = row["after_acc_mean"] - row["before_acc_mean"]
    auto = bool((both["seed_rule"] == "auto").any())
    cmp = compare(before, after, correct, confidence=sequential_confidence() if auto else CONFIDENCE)
    row.update({k: v for k, v in cmp.items() if k not in ("one_seed", "paired_seeds")})
    k = int(cmp["paired_seeds"])
    row["seeds_paired"], row["seed_rule"] = k, "auto" if auto else "fixed"
    decided = row["verdict"] in ("better", "worse")
    row["seeds_why"] = ("" if not k else
                        ("decided" if decided else "cap" if k >= MAX_SEEDS else "unfinished") if auto else "fixed")
    if cmp["one_seed"] and row["verdict"]:
        row["verdict"] += " (one seed)"
    for side, recipe, df in (("before", baseline, before), ("after", other, after)):
        k = row[f"{side}_collapsed"]
        if len(df) >= 2 and k and row["verdict"]:  # the finding is the collapse, not the mean
            row["verdict"] += f"; {recipe} collapsed in {k} of {len(df)} seeds"
    row["flags"] = "; ".join(_flags(before, baseline) + (_flags(after, other) if other else []))
    return row


UNFINISHED = ("running", "interrupted", "time_limit", "stopped", "failed")


def best_lr(runs: pd.DataFrame) -> float:
    """The lr a recipe's runs choose: the highest median final *validation* accuracy over seeds (ties: the
    lower lr), a diverged run counted at chance, an unfinished or failed one not at all. NaN when none
    finished. Validation chooses; the runs' test accuracy is what is then reported."""
    done = runs[~runs["status"].isin(UNFINISHED)]
    val = done["final"].where((done["status"] != "diverged") & done["final"].notna(), done["chance"])
    med = val.groupby(done["lr"]).median().dropna()
    return math.nan if med.empty else float(med.idxmax())


def _at_best_lr(runs: pd.DataFrame) -> pd.DataFrame:
    """A recipe's finished runs at its `best_lr`."""
    lr = best_lr(runs)
    done = runs[~runs["status"].isin(UNFINISHED)]
    return runs.iloc[0:0] if math.isnan(lr) else done[done["lr"] == lr]


def before_after(store: Store, experiment_id: int) -> pd.DataFrame:
    """Per model of one experiment: the baseline recipe (naive, when present) against each other
    recipe, reported accuracies (test) in percent as mean and sample std over seeds (with median, min-max
    and collapses). With an lr axis: once at each recipe's own lr (the x1 point) and once each at its
    best lr in the grid (chosen on validation, reported on test), whether the recipe matters beyond its
    learning rate. Raw numbers (CSV-ready)."""
    runs = read_runs(store, experiment_id)
    if runs.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    summary = run_summary(store, runs, read_epochs(store, runs["id"].tolist()))
    correct = read_test_correct(store, runs["id"].tolist())
    axis = summary["lr_mult"].notna().any()
    several_lrs = summary["lr"].nunique() > 1  # one lr: its best is its own, no second row
    rows = []
    # Models in the order their first run was created (the grid's order).
    for (model, stands_for), group in summary.groupby(["model", summary["stands_for"].fillna("")], sort=False):
        # A timm model run by name records the recipe family it got and why (models.family_why): the table says it.
        tags = runs.loc[runs["id"].isin(group["run_id"]), "params"].map(
            lambda p: (p.get("tags") or {}) if isinstance(p, dict) else {})
        fam = next((t for t in tags if "family" in t), None)
        label = {"model": stand_in_label(model, stands_for or None, short=True) + (f" (family {fam['family']})" if fam else ""),
                 "ran": model, "stands_for": stands_for or None,
                 "family": f"{fam['family']}: {fam.get('family_why', '')}" if fam else ""}
        recipes = list(dict.fromkeys(group["recipe"]))
        baseline = "naive" if "naive" in recipes else recipes[0]
        others = [r for r in recipes if r != baseline] or [None]
        own = group[np.isclose(group["lr_mult"], 1.0)] if axis else group
        for other in others:
            of = lambda df, recipe: df[df["recipe"] == recipe] if recipe else df.iloc[0:0]  # noqa: E731
            # On an absolute lr axis a recipe's own lr may be no grid point: then only the best-lr row.
            if not axis or not several_lrs or (not of(own, baseline).empty and (other is None or not of(own, other).empty)):
                rows.append(_comparison(label, baseline, other, of(own, baseline), of(own, other), "own", correct))
            if axis and several_lrs:
                rows.append(_comparison(label, baseline, other, _at_best_lr(of(group, baseline)),
                                        _at_best_lr(of(group, other)) if other else group.iloc[0:0], "best", correct))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def latest_benchmark(store: Store) -> int | None:
    df = store.read_sql("SELECT max(id) AS id FROM experiments WHERE kind = 'benchmark'")
    return None if df.empty or pd.isna(df.iloc[0]["id"]) else int(df.iloc[0]["id"])


def check_runs_exist(store: Store, run_ids: list[int], field: str = "--compare") -> None:
    found = set(read_runs(store, run_ids=run_ids)["id"].astype(int)) if run_ids else set()
    missing = [i for i in run_ids if i not in found]
    if missing:
        have = store.read_sql("SELECT min(id) AS lo, max(id) AS hi, count(*) AS n FROM runs").iloc[0]
        where = f"this database has runs {int(have['lo'])}..{int(have['hi'])}" if have["n"] else "this database has no runs yet"
        raise UserError(field, missing[0] if len(missing) == 1 else missing,
                        f"No such run id; {where} (see index.html or `harness report`).")
