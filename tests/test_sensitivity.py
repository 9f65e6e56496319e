"""The lr axis: the sensitivity numbers, the window, the danger-zone flags and the collapse counts
against a table computed by hand; the before/after table at own and best lrs; `--lrs` refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from harness import sensitivity as sens
from harness import tables as rep
from harness.benchmark import load_grid, resolve_grid
from harness.cli import main
from harness.store import Store

# (final val acc, test acc) in % per (recipe, lr) for seeds 0, 1, 2 on digits (10 classes, chance 10%),
# 200 validation and 200 test images. "D" = diverged (its last val acc 5%: counted at chance, no test score).
# Collapsed: test accuracy not above chance by a one-sided binomial test at 1% (22 of 200 right is not).
FINALS = {
    ("naive", 1e-4): [(70, 60), (72, 62), (68, 58)],
    ("naive", 1e-3): [(65, 75), (10, 10), (11, 11)],   # two of three seeds collapse beside one clear: danger
    ("naive", 1e-2): ["D", (9, 9), (10, 10)],          # all fail: not a danger zone, just failure
    ("vit (fitted)", 1e-4): [(60, 60), (62, 62), (64, 64)],
    ("vit (fitted)", 1e-3): [(80, 80), (84, 84), (82, 82)],
    # Validation and test rank the lrs differently: val picks 1e-3 (median 82 > 78), test would pick 1e-2 (85).
    ("vit (fitted)", 1e-2): [(78, 85), (11, 11), (79, 86)],
}
OWN_LR = {"naive": 1e-3, "vit (fitted)": 1e-3}
LN10 = math.log(10)


def _loss(test_pct: float) -> float:
    """The test loss written for a run (hand-picked: 3 x error rate; read back clipped at ln 10)."""
    return 3.0 * (1 - test_pct / 100)


@pytest.fixture
def grid_db(db_url):
    store = Store(db_url)
    exp = store.create_experiment(kind="benchmark", name="lr grid", spec="")
    for (recipe, lr), finals in FINALS.items():
        for seed, final in enumerate(finals):
            tags = {"lr_point": f"{lr:g}", "lr_mult": lr / OWN_LR[recipe], "lr": lr, "own_lr": OWN_LR[recipe]}
            params = {"data": {"name": "digits"}, "recipe": {"batch_size": 64}, "epochs": 1, "train_images": 1000,
                      "tags": tags}
            run = store.create_run(exp, model="vit_tiny", stands_for="vit_base", recipe=recipe, params=params, seed=seed)
            acc = 0.05 if final == "D" else final[0] / 100
            store.log_epoch(run, 1, {"train_loss": 1.0, "train_acc": acc, "val_loss": 1.0, "val_acc": acc, "lr": lr})
            store.save_evaluation(run, {"epoch": 1, "class_names": [str(k) for k in range(10)], "per_class_acc": [0.5] * 10,
                                        "confusion": [[20 if i == j else 0 for j in range(10)] for i in range(10)],
                                        "samples": []})
            if final != "D":
                store.save_test(run, {"test_acc": final[1] / 100, "test_loss": _loss(final[1]), "n_test": 200,
                                      "test_correct": None})
            store.finish_run(run, status="diverged" if final == "D" else "completed")
    store.finish_experiment(exp, "completed")
    store.close()
    return db_url, exp


def test_sensitivity_table_matches_hand_computation(grid_db):
    db, exp = grid_db
    store = rep.open_reader(db)
    try:
        runs, points, summary = sens.sensitivity(store, exp)
    finally:
        store.close()
    assert len(runs) == 18 and len(points) == 6
    p = points.set_index(["recipe", "lr"])
    assert p.loc[("naive", 1e-3), ["val_median", "median", "min", "max"]].tolist() == [11, 11, 10, 75]
    assert p.loc[("naive", 1e-2), ["median", "collapsed", "diverged"]].tolist() == [10, 2, 1]  # diverged at chance
    assert p.loc[("vit (fitted)", 1e-2), ["val_median", "median", "min", "max", "collapsed"]].tolist() == [78, 85, 11, 86, 1]
    assert p["danger"].to_dict() == {("naive", 1e-4): False, ("naive", 1e-3): True, ("naive", 1e-2): False,
                                     ("vit (fitted)", 1e-4): False, ("vit (fitted)", 1e-3): False,
                                     ("vit (fitted)", 1e-2): True}

    s = summary.set_index("recipe")
    naive, vit = s.loc["naive"], s.loc["vit (fitted)"]
    # Best on the validation median; the test median there is reported beside it.
    assert (naive["best_lr"], naive["best_val"], naive["best_test"]) == (1e-4, 70, 60)
    # One-SE window on the paired difference, best - lr by seed: 1e-3 (val 65, 10, 11) is 5, 62, 57 points below,
    # mean 41.3 against SE^2 = var(5, 62, 57)/3 + (.7 x .3 + .287 x .713)/200/3 -> SE 18.4: outside; 1e-2 too.
    mean, se = sens._paired_se(runs[(runs["recipe"] == "naive")], 1e-3, 1e-4)
    d = np.array([5, 62, 57]) / 100
    assert mean == pytest.approx(41.333, abs=1e-3)
    assert se == pytest.approx(100 * math.sqrt(d.var(ddof=1) / 3 + (0.7 * 0.3 + 0.28667 * 0.71333) / 200 / 3), rel=1e-3)
    assert (naive["window_lo"], naive["window_hi"], naive["window_decades"]) == (1e-4, 1e-4, 0) and naive["best_at_edge"]
    # At the grid's low edge: the two lrs below it at the grid's step (a decade) are the ones to add.
    assert naive["add_lrs"] == "1e-05, 1e-06" and naive["safe_lr"] == 1e-4 and naive["safe_from_bad"] == pytest.approx(1)
    # Wortsman on test loss over the shared range (both grids: 1e-4..1e-2), losses clipped at ln 10, medians:
    # naive 1.2, ln 10, ln 10 (the diverged run at ln 10); best 1.2.
    assert naive["loss_sensitivity"] == pytest.approx((0 + (LN10 - 1.2) + (LN10 - 1.2)) / 3)
    assert (naive["shared_lo"], naive["shared_hi"], naive["shared_lrs"]) == (1e-4, 1e-2, 3)
    assert naive["acc_sensitivity"] == pytest.approx((0 + (60 - 11) + (60 - 10)) / 3)  # test medians, at least chance
    assert (naive["own_lr_where"], naive["naive_lr_where"], naive["danger_lrs"]) == ("above the window", "above the window", "0.001")
    assert math.isclose(naive["own_lr_vs_best"], 10) and (naive["collapsed"], naive["diverged"]) == ("4/9", "1/9")

    assert (vit["best_lr"], vit["best_val"], vit["best_test"]) == (1e-3, 82, 82)  # not 1e-2, test's favourite
    # 1e-2 (val 78, 11, 79) is 2, 73, 3 below 1e-3 by seed: mean 26 > its SE 23.6; 1e-4: 20 > 2.8.
    assert (vit["window_lo"], vit["window_hi"]) == (1e-3, 1e-3) and not vit["best_at_edge"] and vit["add_lrs"] == ""
    assert vit["safe_lr"] == 1e-3 and vit["safe_from_bad"] == pytest.approx(1)  # 1e-2 had a collapsed seed
    # vit losses: 1.14, 0.54, 0.45 (medians of 3 x error); best 0.45.
    assert vit["loss_sensitivity"] == pytest.approx(((1.14 - 0.45) + (0.54 - 0.45) + 0) / 3)
    assert vit["acc_sensitivity"] == pytest.approx(((85 - 62) + (85 - 82) + 0) / 3)
    assert (vit["own_lr_where"], vit["naive_lr_where"], vit["danger_lrs"]) == ("in the window", "in the window", "0.01")

    text = rep.to_text(sens.format_summary(summary))
    assert "0.0001 (70.0) at the edge: add 1e-05, 1e-06" in text and "0.001 only" in text
    assert "0.001: 10x above the best, above the window" in text and "0.735 over 0.0001–0.01" in text


def test_before_after_chosen_on_val_reported_on_test(grid_db):
    db, exp = grid_db
    store = rep.open_reader(db)
    try:
        table = rep.before_after(store, exp)
    finally:
        store.close()
    own, best = table[table["lrs"] == "own"].iloc[0], table[table["lrs"] == "best"].iloc[0]
    # At the own lr (1e-3 for both), on test: naive [75, 10, 11] against vit [80, 84, 82].
    assert (own["before_acc_median"], own["before_acc_min"], own["before_acc_max"]) == (11, 10, 75)
    assert (own["before_collapsed"], own["after_collapsed"]) == (2, 0)
    assert math.isclose(own["before_acc_mean"], (75 + 10 + 11) / 3)
    # Paired t over 3 seeds: differences 5, 74, 71 -> mean 50, sd 39.0; t(0.975, 2) = 4.3027: the interval holds 0.
    assert own["verdict"] == "no detectable difference; naive collapsed in 2 of 3 seeds"
    assert own["delta_lo"] == pytest.approx(50 - 4.302653 * 39.0 / math.sqrt(3), abs=0.05)
    # Each at its best on validation: naive 1e-4, vit 1e-3 (not 1e-2, whose test median 85 is higher), reported
    # on test: [60, 62, 58] against [80, 84, 82], differences 20, 22, 24.
    assert (best["before_lr"], best["after_lr"], best["before_acc_median"], best["after_acc_median"]) == (1e-4, 1e-3, 60, 82)
    assert math.isclose(best["delta"], 22) and best["verdict"] == "better" and best["chosen_on"] == "val median"
    half = 4.302653 * 2.0 / math.sqrt(3)
    assert (best["delta_lo"], best["delta_hi"]) == (pytest.approx(22 - half, abs=1e-3), pytest.approx(22 + half, abs=1e-3))
    shown = rep.to_text(rep.format_before_after(table))
    assert "each at its own (x1)" in shown and "each at its best on val: 0.0001 → 0.001" in shown
    assert "2/3 → 0/3" in shown and "median 11.0 [10.0–75.0]" in shown
    # On a 100-column terminal: the terminal's columns, laid out to fit, cells folded, nothing cut off.
    narrow = rep.to_text(rep.format_before_after(table, terminal=True), width=100, columns=rep.TERMINAL_COLUMNS)
    assert max(len(line) for line in narrow.splitlines()) <= 100
    assert "verdict" in narrow and "batch, updates" not in narrow and "flags" not in narrow
    for word in "32.0±37.2 82.0±2.0 +22.0 better collapsed own (x1) 0.0001→0.001".split():  # their own columns, never cut
        assert word in narrow, "\n" + narrow


def test_lr_axis_resolves_each_recipe_around_its_own_lr():
    spec = load_grid(None, models="vit_base", lrs="x10,x0.1,x1", seeds=1)
    grid = resolve_grid(spec, cuda=False)
    assert [p.label for p in spec.lrs] == ["x0.1", "x1", "x10"]  # parsed once into typed points, sorted
    assert spec.model_dump(mode="json")["lrs"] == ["x0.1", "x1", "x10"]  # stored as written back
    by = {(r.recipe.label(), r.tags["lr_point"]): r for r in grid.runs}
    assert len(grid.runs) == 6
    naive, vit = by[("naive", "x1")], by[("vit (fitted)", "x1")]
    assert math.isclose(naive.tags["lr"], 1e-3) and math.isclose(vit.tags["lr"], 5e-4 * 64 / 512)
    low = by[("vit (fitted)", "x0.1")]
    assert math.isclose(low.recipe.scaled_lr(), vit.recipe.scaled_lr() / 10)
    # The whole schedule scales: the cosine floor stays below the lowered peak.
    assert math.isclose(low.recipe.min_lr, vit.recipe.min_lr / 10) and low.recipe.min_lr < low.recipe.scaled_lr()
    absolute = resolve_grid(load_grid(None, models="vit_base", lrs="3e-4"), cuda=False)
    assert all(math.isclose(r.recipe.scaled_lr(), 3e-4) for r in absolute.runs)


@pytest.mark.parametrize("lrs,value,fix", [
    ("0", "'0'", "must be a positive number"),
    ("x-3", "'x-3'", "must be a positive number"),
    ("fast", "'fast'", "Not a learning rate. Write multipliers"),
    ("x1,x3,x1", "'x1'", "x1 is listed twice; list each lr once."),
    ("1e-4,x3", "'1e-4,x3'", "Multipliers and absolute lrs are mixed"),
])
def test_bad_lrs_refused_before_anything(tmp_path, monkeypatch, lrs, value, fix):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["benchmark", "--models", "vit_base", "--lrs", lrs, "--db", f"sqlite:///{tmp_path}/r.db",
                                  "--out", str(tmp_path / "d")])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"error: --lrs: got {value}.") and fix in r.output
    assert list(tmp_path.iterdir()) == []  # no database, no pages, no Ray folder


def test_lr_axis_with_a_fixed_lr_refused(tmp_path, monkeypatch):
    """An lr set for every run (--set lr=...) and an lr axis contradict each other."""
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["benchmark", "--models", "vit_base", "--lrs", "default", "--set", "lr=3e-4",
                                  "--db", f"sqlite:///{tmp_path}/r.db"])
    assert r.exit_code == 2 and "error: --set: got {'lr': '3e-4'}." in r.output and "drop the lr from --set" in r.output
    assert list(tmp_path.iterdir()) == []


def test_one_lr_and_failed_runs(db_url):
    """One lr is no curve: no LR sensitivity and no 'each at its best' row. A failed run (an error) is left
    out of the curve rather than counted at chance; a diverged one is counted at chance."""
    store = Store(db_url)
    exp = store.create_experiment(kind="benchmark", name="one lr", spec="")
    for recipe, seed, final, status in [("naive", 0, 0.70, "completed"), ("naive", 1, None, "failed"),
                                        ("vit (fitted)", 0, 0.80, "completed"), ("vit (fitted)", 1, 0.05, "diverged")]:
        tags = {"lr_point": "x1", "lr_mult": 1.0, "lr": 1e-3, "own_lr": 1e-3}
        run = store.create_run(exp, model="vit_tiny", recipe=recipe, seed=seed, params={
            "data": {"name": "digits"}, "recipe": {"batch_size": 64}, "epochs": 1, "train_images": 1000, "tags": tags})
        if final is not None:
            store.log_epoch(run, 1, {"train_loss": 1.0, "train_acc": final, "val_loss": 1.0, "val_acc": final, "lr": 1e-3})
            store.save_test(run, {"test_acc": final, "test_loss": 1.0, "n_test": 200, "test_correct": None})
        store.finish_run(run, status=status)
    store.close()
    store = rep.open_reader(db_url)
    try:
        _, points, summary = sens.sensitivity(store, exp)
        table = rep.before_after(store, exp)
    finally:
        store.close()
    p = points.set_index("recipe")
    assert (p.loc["naive", "seeds"], p.loc["naive", "median"]) == (1, 70)  # the failed seed left out
    assert (p.loc["vit (fitted)", "seeds"], p.loc["vit (fitted)", "median"], p.loc["vit (fitted)", "diverged"]) == (2, 45, 1)
    assert summary["loss_sensitivity"].isna().all() and summary["acc_sensitivity"].isna().all()
    assert "-" in rep.to_text(sens.format_summary(summary))
    assert table["lrs"].tolist() == ["own"]
