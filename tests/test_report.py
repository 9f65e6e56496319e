"""The before/after table: every number traced back to the rows in the database."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest
from dbfill import record

from harness import report as rep
from harness.errors import UserError
from harness.store import Store


def _run(store: Store, exp: int, model: str, recipe: str, seed: int, accs: list[tuple[float, float]], *,
         stands_for: str | None = "resnet50", status: str = "completed", classes: int = 10) -> int:
    """A run written through the Store as the sweep driver writes it: (train_acc, val_acc) per epoch."""
    run = store.create_run(exp, model=model, recipe=recipe, params={"data": {"name": "digits"}, "recipe": {"warmup_epochs": 2}},
                           seed=seed, stands_for=stands_for)
    for i, (tr, va) in enumerate(accs, start=1):
        store.log_epoch(run, i, {"train_loss": 1.0 / i, "train_acc": tr, "val_loss": 1.2 / i, "val_acc": va, "lr": 1e-3,
                                 "grad_norm": 1.0, "epoch_s": 1.0, "images_per_s": 100.0})
    store.save_evaluation(run, {"epoch": 1, "class_names": [str(k) for k in range(classes)],
                                "per_class_acc": [0.5] * classes, "confusion": [[0] * classes] * classes, "samples": []})
    store.finish_run(run, status=status, wall_s=3.0)
    return run


@pytest.fixture
def written(db_url):
    """Two seeds per side, hand-picked accuracies so the table's arithmetic can be checked exactly."""
    store = Store(db_url)
    exp = store.create_experiment(kind="benchmark", name="g")
    _run(store, exp, "resnet18", "naive", 0, [(0.30, 0.20), (0.50, 0.40), (0.70, 0.50)])
    _run(store, exp, "resnet18", "naive", 1, [(0.30, 0.30), (0.60, 0.60), (0.75, 0.55)])
    _run(store, exp, "resnet18", "cnn", 0, [(0.50, 0.60), (0.80, 0.90), (0.95, 0.80)])
    _run(store, exp, "resnet18", "cnn", 1, [(0.40, 0.85), (0.90, 0.70), (0.93, 0.92)])
    # vit: the naive side diverged on one seed and sat at chance on the other.
    _run(store, exp, "vit_tiny", "naive", 0, [(0.10, 0.10)], stands_for="vit_base", status="diverged")
    _run(store, exp, "vit_tiny", "naive", 1, [(0.12, 0.11), (0.11, 0.105)], stands_for="vit_base")
    _run(store, exp, "vit_tiny", "vit", 0, [(0.3, 0.5), (0.6, 0.7)], stands_for="vit_base")
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
    assert r["before_final_mean"] == pytest.approx(100 * (0.50 + 0.55) / 2)
    assert r["after_final_mean"] == pytest.approx(100 * (0.80 + 0.92) / 2)
    assert r["delta_best"] == pytest.approx(100 * ((0.90 + 0.92) / 2 - (0.50 + 0.60) / 2))
    assert r["delta_final"] == pytest.approx(100 * ((0.80 + 0.92) / 2 - (0.50 + 0.55) / 2))
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
    assert "naive: 1/2 diverged" in v["flags"] and "naive: 2/2 never beat chance" in v["flags"]
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
        for col, metric in (("best", "val_acc"), ("final", "val_acc")):
            per_run = [epochs[epochs["run_id"] == i][metric].max() if col == "best"
                       else epochs[epochs["run_id"] == i].sort_values("epoch")[metric].iloc[-1] for i in mine["id"]]
            assert row[f"{side}_{col}_mean"] == pytest.approx(100 * statistics.mean(per_run))
            assert row[f"{side}_{col}_std"] == pytest.approx(100 * statistics.stdev(per_run))
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
    assert shown.loc[0, "Δ best"] == "+36.0"
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
