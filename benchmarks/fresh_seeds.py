"""Schmidt et al.'s check of an lr curve's answer: re-run each model's chosen cell (each recipe at its best lr
on validation) with fresh seeds, and see whether their difference lands inside the interval the curve printed.

    uv run python benchmarks/fresh_seeds.py --db sqlite:///results.db --experiment 1 --seeds 3,4,5

The chosen cell's seeds were picked by validation along with the lr, so a lucky seed's luck can carry into
the curve's test numbers (benchmarks/results/coverage.md, "Selection on validation"); seeds the curve never
saw carry none. Each fresh run is the stored run's spec at its chosen lr with another seed, trained in this
process and recorded in the same database (a `train` experiment each), then scored on the same test images.
Prints, per model: the curve's Δ and interval, the fresh seeds' Δ and their own interval (the same method),
and whether the fresh Δ lies inside the curve's interval.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py
from _common import command_line, importable_harness, md_table, stamp  # noqa: E402

importable_harness()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--experiment", type=int, required=True, help="the lr curve's experiment id")
    ap.add_argument("--seeds", default="3,4,5", help="fresh seeds (none of the curve's)")
    ap.add_argument("--out", type=Path, default=None, help="Markdown file to write the table to")
    args = ap.parse_args(argv)

    from harness import tables as rep
    from harness.runner import run_and_record
    from harness.specs import RunSpec
    from harness.tables import stats

    seeds = [int(s) for s in args.seeds.split(",")]
    store = rep.open_reader(args.db)
    table = rep.before_after(store, args.experiment)
    runs = rep.read_runs(store, args.experiment)
    store.close()
    used = set(runs["seed"].astype(int))
    if used & set(seeds):
        raise SystemExit(f"--seeds: {sorted(used & set(seeds))} already ran in experiment {args.experiment}; use fresh ones")
    rows = []
    for _, row in table[table["lrs"] == "best"].iterrows():
        fresh: dict[str, list[np.ndarray]] = {}
        for side in ("before", "after"):
            recipe, lr = row[f"{side}_recipe"], row[f"{side}_lr"]
            mine = runs[(runs["model"] == row["ran"]) & (runs["recipe"] == recipe)]
            mine = mine[[abs(p["tags"].get("lr", 0) / lr - 1) < 1e-6 for p in mine["params"]]]
            spec = RunSpec.model_validate(mine.iloc[0]["params"])
            fresh[side] = []
            for seed in seeds:
                run_and_record(spec.model_copy(update={"seed": seed, "checkpoint_dir": None}), db=args.db,
                               echo=lambda *_: None)
                store = rep.open_reader(args.db)  # this process is the only writer: the newest run is this one
                last = int(store.read_sql("SELECT max(id) AS id FROM runs").iloc[0]["id"])
                correct = rep.read_test_correct(store, [last])[last]
                store.close()
                fresh[side].append(correct)
                print(f"{row['model']} {recipe} lr {lr:.3g} seed {seed}: test acc {100 * correct.mean():.1f}%", flush=True)
        b, a = np.stack(fresh["before"]), np.stack(fresh["after"])
        lo, hi, _ = stats.seeds_and_images_interval(b, a)
        delta = 100 * (a.mean() - b.mean())
        inside = row["delta_lo"] <= delta <= row["delta_hi"]
        rows.append({
            "model": row["model"], "recipes (each at its best lr)": f"{row['before_recipe']} {row['before_lr']:.3g} → "
            f"{row['after_recipe']} {row['after_lr']:.3g}",
            "curve: Δ [interval]": f"{row['delta']:+.1f} [{row['delta_lo']:+.1f}, {row['delta_hi']:+.1f}] "
                                   f"({row['seeds_paired']} seeds)",
            "fresh seeds": ", ".join(map(str, seeds)),
            "fresh: before → after %": f"{100 * b.mean():.1f} → {100 * a.mean():.1f}",
            "fresh: Δ [its own 95%]": f"{delta:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]",
            "fresh Δ inside the curve's interval": "yes" if inside else "no",
        })
    text = "\n".join([f"`{command_line('fresh_seeds.py', sys.argv[1:] if argv is None else argv)}`", "",
                      f"{stamp()}", "", md_table(rows, list(rows[0])) if rows else "(no 'best' rows: no lr axis)", ""])
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
