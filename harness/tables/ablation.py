"""The ablation ladder's table (`harness ablate`), from the database: each rung's test accuracy and the
Δ of its ingredient with the before/after table's paired interval (`tables.compare`)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from harness.files import write_text_atomic
from harness.store import Store
from harness.tables.before_after import compare, run_summary
from harness.tables.read import read_epochs, read_runs, read_test_correct
from harness.tables.text import format_acc, to_markdown

ABLATION_VERDICT = {"better": "helps", "worse": "hurts", "no detectable difference": "no detectable difference", "": ""}

ABLATION_COLUMNS = ["mode", "rung", "ingredient", "recipe", "seeds", "acc_mean", "acc_std", "acc_lo", "acc_hi",
                 "delta_prev", "delta_prev_lo", "delta_prev_hi", "delta_start", "delta_start_lo", "delta_start_hi",
                 "interval", "verdict"]


def ablation_table(store: Store, experiment_id: int) -> pd.DataFrame:
    """One row per rung: test acc (%), Δ against the previous rung (add) or the full recipe (drop)
    with its 95% interval, Δ against the start, and the verdict on the ingredient (helps / hurts / no
    detectable difference). Intervals as in the before/after table (report.compare)."""
    runs = read_runs(store, experiment_id)
    if runs.empty:
        return pd.DataFrame(columns=ABLATION_COLUMNS)
    summary = run_summary(store, runs, read_epochs(store, runs["id"].tolist()))
    correct = read_test_correct(store, runs["id"].tolist())
    tags = runs["params"].map(lambda p: (p or {}).get("tags") or {})
    summary["mode"] = tags.map(lambda t: t.get("mode")).values
    summary["rung"] = tags.map(lambda t: t.get("rung")).values
    summary["ingredient"] = tags.map(lambda t: t.get("ingredient") or "").values
    rows = []
    for mode in ("add", "drop"):
        side = summary[summary["mode"] == mode]
        if side.empty:
            continue
        start = side[side["rung"] == 0]
        for rung, group in side.groupby("rung", sort=True):
            prev = start if mode == "drop" else side[side["rung"] == rung - 1]
            accs = 100 * group["acc"].astype(float)
            row = {"mode": mode, "rung": int(rung), "ingredient": group["ingredient"].iloc[0], "recipe": group["recipe"].iloc[0],
                   "seeds": len(group), "acc_mean": accs.mean(),
                   "acc_std": accs.std(ddof=1) if accs.notna().sum() > 1 else math.nan,
                   "acc_lo": 100 * group["acc_lo"].iloc[0] if len(group) == 1 else math.nan,
                   "acc_hi": 100 * group["acc_hi"].iloc[0] if len(group) == 1 else math.nan}
            for key, base in (("delta_prev", prev), ("delta_start", start)):
                if rung == 0:
                    row.update({key: math.nan, f"{key}_lo": math.nan, f"{key}_hi": math.nan})
                    continue
                cmp = compare(base, group, correct)
                row[key] = accs.mean() - 100 * base["acc"].astype(float).mean()
                row[f"{key}_lo"], row[f"{key}_hi"] = cmp["delta_lo"], cmp["delta_hi"]
                if key == "delta_prev":
                    row["interval"] = cmp["interval"]
                    # drop: the rung is the full recipe without the ingredient, so "worse" means it helps.
                    v = cmp["verdict"]
                    if mode == "drop":
                        v = {"better": "worse", "worse": "better"}.get(v, v)
                    row["verdict"] = ABLATION_VERDICT[v] + (" (one seed)" if cmp["one_seed"] and v else "")
            rows.append(row)
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)


def format_ablation(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in table.iterrows():
        step = "start" if r["rung"] == 0 else ("+" if r["mode"] == "add" else "−") + str(r["ingredient"])
        def delta(k: str, r=r) -> str:
            return "" if pd.isna(r[k]) else f"{r[k]:+.1f} [{r[f'{k}_lo']:+.1f}, {r[f'{k}_hi']:+.1f}]"

        rows.append({"mode": r["mode"], "rung": r["rung"], "ingredient": step, "seeds": r["seeds"],
                     "test acc %": format_acc(r["acc_mean"], r["acc_std"], r["acc_lo"], r["acc_hi"]),
                     "Δ vs previous" if r["mode"] == "add" else "Δ vs full": delta("delta_prev"),
                     "Δ vs start": delta("delta_start") if r["mode"] == "add" else "",
                     "verdict": r["verdict"] or ""})
    return pd.DataFrame(rows).fillna("")


ABLATION_LEGEND = ("Test accuracy in %, the final weights on the held-out test split (one seed: [95% Wilson interval over "
                "the test images]; several: mean ± std). add: each rung "
                "adds one ingredient to the previous one, Δ vs previous is that ingredient's effect at this point of the "
                "order — the order matters, because ingredients interact. drop: each rung is the full recipe without one "
                "ingredient (its fields back at naive's), Δ vs full; the check on add's order. Paired 95% intervals, as in "
                "the before/after table: Newcombe's paired interval over the test images for one seed (image noise "
                "only), Student's t on the per-seed differences for two or more; verdict on the ingredient: helps / "
                "hurts when the interval excludes 0, else no detectable difference.")


def save_ablation(store: Store, experiment_id: int, out: Path) -> tuple[Path, Path, pd.DataFrame]:
    table = ablation_table(store, experiment_id)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"ablate-{experiment_id}.md", out / f"ablate-{experiment_id}.csv"
    text = (f"# Ablation (experiment {experiment_id})\n\n{ABLATION_LEGEND}\n\n"
            + (to_markdown(format_ablation(table)) if not table.empty else "No runs recorded yet.\n"))
    write_text_atomic(md, text)
    write_text_atomic(csv, table.to_csv(index=False))
    return md, csv, table
