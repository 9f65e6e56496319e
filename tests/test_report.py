"""The before/after table: every number traced back to the rows in the database."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
from dbfill import record

from harness import tables as rep
from harness.errors import UserError
from harness.store import Store


def _run(store: Store, exp: int, model: str, recipe: str, seed: int, accs: list[tuple[float, float]], *,
         stands_for: str | None = "resnet50", status: str = "completed", classes: int = 10, test: float | None = None) -> int:
    """A run written through the Store as the sweep driver writes it: (train_acc, val_acc) per epoch, 200
    validation images in its evaluation, and its test accuracy on 100 images when it has one."""
    run = store.create_run(exp, model=model, recipe=recipe, params={"data": {"name": "digits"}, "recipe": {"warmup_epochs": 2}},
                           seed=seed, stands_for=stands_for)
    for i, (tr, va) in enumerate(accs, start=1):
        store.log_epoch(run, i, {"train_loss": 1.0 / i, "train_acc": tr, "val_loss": 1.2 / i, "val_acc": va, "lr": 1e-3,
                                 "grad_norm": 1.0, "epoch_s": 1.0, "images_per_s": 100.0})
    store.save_evaluation(run, {"epoch": 1, "class_names": [str(k) for k in range(classes)],
                                "per_class_acc": [0.5] * classes,
                                "confusion": [[200 // classes if i == j else 0 for j in range(classes)] for i in range(classes)],
                                "samples": []})
    if test is not None:
        store.save_test(run, {"test_acc": test, "test_loss": 1.0, "n_test": 100, "test_correct": None})
    store.finish_run(run, status=status, wall_s=3.0)
    return run


@pytest.fixture
def written(db_url):
    """Two seeds per side, hand-picked accuracies so the table's arithmetic can be checked exactly."""
    store = Store(db_url)
    exp = store.create_experiment(kind="benchmark", name="g")
    _run(store, exp, "resnet18", "naive", 0, [(0.30, 0.20), (0.50, 0.40), (0.70, 0.50)], test=0.45)
    _run(store, exp, "resnet18", "naive", 1, [(0.30, 0.30), (0.60, 0.60), (0.75, 0.55)], test=0.52)
    _run(store, exp, "resnet18", "cnn", 0, [(0.50, 0.60), (0.80, 0.90), (0.95, 0.80)], test=0.82)
    _run(store, exp, "resnet18", "cnn", 1, [(0.40, 0.85), (0.90, 0.70), (0.93, 0.92)], test=0.90)
    # vit: the naive side diverged on one seed (no test score) and sat at chance on the other.
    _run(store, exp, "vit_tiny", "naive", 0, [(0.10, 0.10)], stands_for="vit_base", status="diverged")
    _run(store, exp, "vit_tiny", "naive", 1, [(0.12, 0.11), (0.11, 0.105)], stands_for="vit_base", test=0.11)
    _run(store, exp, "vit_tiny", "vit", 0, [(0.3, 0.5), (0.6, 0.7)], stands_for="vit_base", test=0.66)
    yield store, exp
    store.close()


def test_table_numbers_match_hand_computation(written):
    store, exp = written
    t = rep.before_after(store, exp).set_index("ran")
    r = t.loc["resnet18"]
    assert (r["model"], r["before_recipe"], r["after_recipe"]) == ("resnet18 (for resnet50)", "naive", "cnn")
    assert r["before_best_mean"] == pytest.approx(100 * (0.50 + 0.60) / 2)
    assert r["before_best_std"] == pytest.approx(100 * statistics.stdev([0.50, 0.60]))
    assert r["after_best_mean"] == pytest.approx(100 * (0.90 + 0.92) / 2)
    # Reported: the test split (not the final val accuracies 0.50/0.55 and 0.80/0.92, which only choose).
    assert (r["split"], r["n_images"]) == ("test", 100)
    assert r["before_acc_mean"] == pytest.approx(100 * (0.45 + 0.52) / 2)
    assert r["after_acc_mean"] == pytest.approx(100 * (0.82 + 0.90) / 2)
    assert r["delta_best"] == pytest.approx(100 * ((0.90 + 0.92) / 2 - (0.50 + 0.60) / 2))
    assert r["delta"] == pytest.approx(100 * ((0.82 + 0.90) / 2 - (0.45 + 0.52) / 2))
    # Paired t over the 2 seeds: differences 37 and 38 points, sd 0.7071, t(0.975, 1 df) = 12.7062.
    half = 12.706205 * statistics.stdev([37.0, 38.0]) / math.sqrt(2)
    assert (r["delta_lo"], r["delta_hi"]) == (pytest.approx(37.5 - half, abs=1e-3), pytest.approx(37.5 + half, abs=1e-3))
    # No per-image results here: t over seeds, labelled as leaving the test sample's own error out.
    assert r["interval"].startswith("paired t over seeds, 95%: 2 seeds") and "not in it" in r["interval"]
    assert r["verdict"] == "better" and (r["seeds_paired"], r["seeds_why"]) == (2, "fixed")
    # 90% of best: naive seed 0 best 0.50 -> 0.45 first reached at epoch 3; seed 1 best 0.60 -> 0.54 at epoch 2.
    assert r["before_epochs_to_90"] == pytest.approx((3 + 2) / 2)
    # cnn seed 0 best 0.90 -> 0.81 at epoch 2; seed 1 best 0.92 -> 0.828 at epoch 1 (0.85).
    assert r["after_epochs_to_90"] == pytest.approx((2 + 1) / 2)
    assert r["before_gap"] == pytest.approx(100 * ((0.70 - 0.50) + (0.75 - 0.55)) / 2)
    assert r["after_gap"] == pytest.approx(100 * ((0.95 - 0.80) + (0.93 - 0.92)) / 2)
    assert r["flags"] == ""

    v = t.loc["vit_tiny"]
    assert v["model"] == "vit_tiny (for vit_base)" and v["after_recipe"] == "vit"
    assert (v["before_runs"], v["after_runs"]) == (2, 1)
    assert math.isnan(v["after_best_std"])  # one seed: no spread, not a zero
    # Chance by a one-sided binomial test: best val 0.11 of 200 images (22 right) is not above 10%.
    assert "naive: 1/2 diverged" in v["flags"] and "naive: 2/2 never beat chance" in v["flags"]
    assert "naive: 1/2 reported on validation (no test split)" in v["flags"]  # the diverged run has no test score
    assert "vit:" not in v["flags"]


def test_table_matches_the_rows_of_real_runs(db_url, tiny_spec):
    """A real grid (fit() on synthetic data): the table is the runs/epochs rows, aggregated."""
    specs = [tiny_spec(recipe=r, seed=s, epochs=2, stands_for="resnet50") for r in ("naive", "tuned") for s in (0, 1)]
    exp = record(db_url, specs)
    store = rep.open_reader(db_url)
    runs = store.read_sql("SELECT * FROM runs WHERE experiment_id = :e", e=exp)
    epochs = store.read_sql("SELECT * FROM epochs")
    row = rep.before_after(store, exp).iloc[0]
    assert (row["before_recipe"], row["after_recipe"]) == ("naive", "cnn (fitted)")
    for side, recipe in (("before", "naive"), ("after", "cnn (fitted)")):
        mine = runs[runs["recipe"] == recipe]
        assert len(mine) == 2
        best = [epochs[epochs["run_id"] == i]["val_acc"].max() for i in mine["id"]]
        assert row[f"{side}_best_mean"] == pytest.approx(100 * statistics.mean(best))
        assert row[f"{side}_best_std"] == pytest.approx(100 * statistics.stdev(best))
        # Reported: each run's test accuracy, scored once on the final weights (fit() writes it to the run).
        assert mine["test_acc"].notna().all() and (mine["n_test"] > 0).all()
        assert row[f"{side}_acc_mean"] == pytest.approx(100 * statistics.mean(mine["test_acc"]))
        assert row[f"{side}_acc_std"] == pytest.approx(100 * statistics.stdev(mine["test_acc"]))
        gaps = [100 * (e["train_acc"].iloc[-1] - e["val_acc"].iloc[-1])
                for e in (epochs[epochs["run_id"] == i].sort_values("epoch") for i in mine["id"])]
        assert row[f"{side}_gap"] == pytest.approx(statistics.mean(gaps))
    store.close()


def test_markdown_and_csv_saved(written, tmp_path):
    store, exp = written
    md, csv, table = rep.save_before_after(store, exp, tmp_path / "out")
    text = md.read_text()
    assert text.count("\n| ") == 1 + len(table)  # header + one line per row (the separator starts with '|-')
    assert "resnet18 (for resnet50)" in text and "naive → cnn" in text and "55.0 ± 7.1 → 91.0 ± 1.4" in text
    back = pd.read_csv(csv)
    assert list(back.columns) == rep.TABLE_COLUMNS
    assert back.loc[back["ran"] == "resnet18", "after_best_mean"].item() == pytest.approx(91.0)


def test_formatted_table_says_what_ran(written):
    store, exp = written
    shown = rep.format_before_after(rep.before_after(store, exp))
    assert shown["model"].tolist() == ["resnet18 (for resnet50)", "vit_tiny (for vit_base)"]
    assert shown.loc[0, "Δ [CI]"] == "+37.5 [+31.1, +43.9]"  # t over 2 seeds: wide, and honest about it
    assert shown.loc[0, "test acc % (val where flagged)"] == "48.5 ± 4.9; median 48.5 [45.0–52.0] → 86.0 ± 5.7; median 86.0 [82.0–90.0]"
    assert shown.loc[1, "best val acc %"] == "10.5 ± 0.7 → 70.0"


def test_missing_and_foreign_databases_refused(tmp_path):
    with pytest.raises(UserError, match="No such database"):
        rep.open_reader(f"sqlite:///{tmp_path / 'nope.db'}")
    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(UserError, match="Not an SQLite database"):
        rep.open_reader(f"sqlite:///{tmp_path / 'notes.db'}")
    assert not (tmp_path / "nope.db").exists()


def test_compare_ids_checked(written):
    store, _ = written
    rep.check_runs_exist(store, [1, 2])
    with pytest.raises(UserError, match=r"--compare: got 99\. No such run id; this database has runs 1\.\.7"):
        rep.check_runs_exist(store, [1, 99])


def test_report_title_names_the_tables_accuracy_column(written, db_url, tmp_path):
    """`harness report` heads the latest benchmark's table with the accuracy its column holds (test; val
    where the data has none), not "val acc %" over a "test acc %" column."""
    from click.testing import CliRunner

    from harness.cli import main

    _, exp = written
    r = CliRunner().invoke(main, ["report", "--db", db_url, "--out", str(tmp_path / "pages")])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.startswith(f"latest benchmark (experiment {exp}), "))
    title = lines[at].split("), ", 1)[1].rstrip(":")
    assert title.startswith("test acc %") and title in lines[at + 1]  # the header line below it holds the column


def test_a_timm_model_by_name_says_its_family_and_why(db_url):
    """A model run by its timm name records the recipe family it got and why; the table shows both."""
    store = Store(db_url)
    exp = store.create_experiment(kind="benchmark", name="by name")
    why = "ConvNeXt was published with Swin-T's recipe"
    for recipe in ("naive", "swin (fitted)"):
        rid = store.create_run(exp, model="convnext_tiny", recipe=recipe, seed=0, params={
            "data": {"name": "digits"}, "recipe": {"batch_size": 64}, "epochs": 1, "train_images": 100,
            "tags": {"family": "swin", "family_why": why}})
        store.log_epoch(rid, 1, {"train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.0, "val_acc": 0.5, "lr": 1e-3})
        store.finish_run(rid, status="completed")
    row = rep.before_after(store, exp).iloc[0]
    assert row["model"] == "convnext_tiny (family swin)" and row["family"] == f"swin: {why}"
    shown = rep.format_before_after(rep.before_after(store, exp))
    assert shown.loc[0, "family (by name: why)"] == f"swin: {why}"
    store.close()
