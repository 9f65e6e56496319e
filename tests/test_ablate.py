"""`harness ablate`: the ingredient groups, the ladders built from them, the table from the rows."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from harness.ablate import changed, ladder, resolve_ablation
from harness.cli import main
from harness.recipes import INGREDIENTS, TUNABLE
from harness.store import Store
from harness.tables import ablation_table


def test_every_tunable_field_is_in_exactly_one_ingredient():
    grouped = [f for fields in INGREDIENTS.values() for f in fields] + ["batch_size"]  # the budget: one on every rung
    assert sorted(grouped) == sorted(TUNABLE), "a recipe field belongs to no ingredient (or to two)"


def _diff(a, b) -> set[str]:
    return {f for f in TUNABLE if getattr(a, f) != getattr(b, f)}


@pytest.mark.parametrize("model", ["vit_base", "resnet50", "swin_tiny", "efficientnet_b3"])
def test_add_rungs_differ_by_exactly_their_ingredient(model):
    ab = resolve_ablation(model, mode="both")
    add = [r for r in ab.rungs if r.mode == "add"]
    assert _diff(add[0].recipe, ab.start) == set() and _diff(add[-1].recipe, ab.end) == set()
    for prev, rung in zip(add, add[1:]):
        d = _diff(prev.recipe, rung.recipe)
        assert d and d <= set(INGREDIENTS[rung.ingredient]), (rung.ingredient, d)
    drop = [r for r in ab.rungs if r.mode == "drop"]
    assert _diff(drop[0].recipe, ab.end) == set()
    for rung in drop[1:]:
        d = _diff(rung.recipe, ab.end)
        assert d and d <= set(INGREDIENTS[rung.ingredient]), (rung.ingredient, d)
    assert {r.recipe.batch_size for r in ab.rungs} == {64}  # the budget never changes along a ladder
    assert [r.ingredient for r in add[1:]] == changed(ab.start, ab.end)


def test_own_order_and_subset():
    ab = resolve_ablation("vit_base", steps="clip,optimizer,lr", seeds=2)
    assert ab.steps == ("clip", "optimizer", "lr") and len(ab.runs) == 4 * 2
    assert [r.tags["rung"] for r in ab.runs] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ab.runs[-1].recipe.optimizer == "adamw" and ab.runs[-1].recipe.warmup_epochs == 0  # warmup not added


def _fill(db_url, finals: dict[tuple[str, int], list[float]]) -> int:
    """Rows as the grid recorder writes them: one run per (mode, rung) and seed, final val acc given."""
    store = Store(db_url)
    exp = store.create_experiment(kind="ablate", name="ablate vit_base")
    names = {0: "", 1: "optimizer", 2: "lr"}
    for (mode, rung), accs in finals.items():
        for seed, acc in enumerate(accs):
            params = {"data": {"name": "digits"}, "epochs": 2, "train_images": 1438, "recipe": {"batch_size": 64},
                      "tags": {"mode": mode, "rung": rung, "ingredient": names[rung]}}
            run = store.create_run(exp, model="vit_tiny", recipe=f"{mode}{rung}", params=params, seed=seed, stands_for="vit_base")
            store.log_epoch(run, 1, {"val_acc": acc / 2})
            store.log_epoch(run, 2, {"val_acc": acc})
            confusion = [[0] * 10 for _ in range(10)]
            confusion[0][0] = 359
            store.save_evaluation(run, {"epoch": 2, "class_names": [str(i) for i in range(10)], "per_class_acc": [0.0] * 10,
                                        "confusion": confusion, "samples": []})
            store.finish_run(run, status="completed")
    store.close()
    return exp


def test_table_deltas_match_the_rows(db_url):
    exp = _fill(db_url, {("add", 0): [0.30, 0.32], ("add", 1): [0.50, 0.54], ("add", 2): [0.52, 0.53],
                         ("drop", 0): [0.80, 0.82], ("drop", 1): [0.40, 0.44], ("drop", 2): [0.81, 0.80]})
    store = Store(db_url, create=False)
    t = ablation_table(store, exp).set_index(["mode", "rung"])
    store.close()
    assert t.loc[("add", 1), "delta_prev"] == pytest.approx(100 * (0.52 - 0.31))
    assert t.loc[("add", 2), "delta_prev"] == pytest.approx(100 * (0.525 - 0.52))
    assert t.loc[("add", 2), "delta_start"] == pytest.approx(100 * (0.525 - 0.31))
    # Validation reports (no test split, no per-image results): t over seeds, labelled as leaving the images out.
    assert t.loc[("add", 1), "verdict"] == "helps"
    assert t.loc[("add", 1), "interval"].startswith("paired t over seeds, 95%: 2 seeds") and "not in it" in t.loc[("add", 1), "interval"]
    # drop: removing the optimizer costs 39 points, so the optimizer helps.
    assert t.loc[("drop", 1), "delta_prev"] == pytest.approx(100 * (0.42 - 0.81))
    assert t.loc[("drop", 1), "verdict"] == "helps"
    assert t.loc[("add", 0), "acc_mean"] == pytest.approx(31.0)  # no test split here: reported on validation


def test_waterfall_page_holds_its_data(db_url, tmp_path):
    exp = _fill(db_url, {("add", 0): [0.30], ("add", 1): [0.60], ("add", 2): [0.70]})
    r = CliRunner().invoke(main, ["report", "--db", db_url, "--out", str(tmp_path / "dash")])
    assert r.exit_code == 0, r.output
    html = (tmp_path / "dash" / f"ablate-{exp}.html").read_text()
    assert '"type":"waterfall"' in html.replace(" ", "")
    figure = json.loads(re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', html, re.S).group(1))
    waterfall = next(t for t in figure if t["type"] == "waterfall")
    assert waterfall["x"] == ["naive", "+optimizer", "+lr"]
    assert waterfall["y"] == pytest.approx([30.0, 30.0, 10.0])
    assert "the order matters" in html and f"ablate-{exp}.md" in html
    assert f"ablate-{exp}.html" in (tmp_path / "dash" / "index.html").read_text()


@pytest.mark.parametrize("args,field,fix", [
    (["--model", "vit_bas"], "--model", "Did you mean 'vit_base'"),
    (["--model", "vit_base", "--steps", "warmpu"], "--steps", "Did you mean 'warmup'"),
    (["--model", "vit_base", "--steps", "ema"], "--steps", "does not change ema: its fields equal naive's (ema_decay=None)"),
    (["--model", "vit_base", "--steps", "lr,warmup,lr"], "--steps", "lr is listed twice"),
    (["--model", "vit_base", "--seeds", "0"], "--seeds", "at least 1 seed"),
    (["--model", "vit_base", "--recipe", "vitt"], "--recipe", "Did you mean 'vit'"),
])
def test_bad_input_exits_2_and_writes_nothing(args, field, fix, tmp_path):
    db = tmp_path / "results.db"
    r = CliRunner().invoke(main, ["ablate", "--db", f"sqlite:///{db}", "--out", str(tmp_path / "dash"), *args])
    assert r.exit_code == 2, r.output
    assert f"error: {field}" in r.output and fix in r.output, r.output
    assert not db.exists() and not (tmp_path / "dash").exists()


@pytest.mark.slow
def test_ablate_end_to_end_through_ray(ray_local, tmp_path, monkeypatch):
    """Three rungs of resnet18 on synthetic data, through the benchmark's Ray grid, into one `ablate` experiment."""
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'results.db'}"
    r = CliRunner().invoke(main, ["ablate", "--model", "resnet50", "--steps", "optimizer,lr", "--epochs", "1",
                                  "--data", "synthetic", "--db", db, "--out", str(tmp_path / "dash")])
    assert r.exit_code == 0, r.output
    assert "ablate: resnet18 (CPU stand-in for resnet50), naive -> cnn (fitted)" in r.output
    store = Store(db, create=False)
    runs = store.read_sql("SELECT * FROM runs")
    exp = store.read_sql("SELECT * FROM experiments").iloc[0]
    table = ablation_table(store, int(exp["id"]))
    store.close()
    assert exp["kind"] == "ablate" and len(runs) == 3 and set(runs["status"]) == {"completed"}
    assert table["ingredient"].tolist() == ["", "optimizer", "lr"]
    assert (tmp_path / "dash" / f"ablate-{int(exp['id'])}.html").is_file()
    assert f"ablate-{int(exp['id'])}.md" in r.output


def test_ladder_is_pure_data():
    ab = resolve_ablation("swin_tiny", mode="drop", steps="clip")
    rungs = ladder(ab.start, ab.end, ["clip"], "drop")
    assert [r.recipe.grad_clip for r in rungs] == [5.0, 0.0]


def test_continue_with_rebuilds_the_same_ladder(monkeypatch):
    """Issue 36: an interrupted ablation's 'continue with' line carries the ladder's flags (ablate resumes
    from its flags, not its row): parsed back through the CLI, they resolve to the same stored ladder."""
    import shlex

    from harness import ablate
    from harness.datasets import DataSpec
    from harness.experiment import Where, continue_with

    ab = resolve_ablation("vit_base", steps="lr,warmup", seeds=2, epochs=3, batch_size=32,
                          data=DataSpec(name="synthetic", image_size=16, train_size=64))
    line = continue_with(ablate.Ladder(ab, 2), Where(db="sqlite:///r.db", storage_path="ray"))
    assert line.endswith("--resume --db sqlite:///r.db --storage-path ray"), line
    got = {}
    from types import SimpleNamespace

    def run_ablation(again, where, **kw):
        got["ab"] = again
        return SimpleNamespace(status="completed")

    monkeypatch.setattr(ablate, "run_ablation", run_ablation)
    args = shlex.split(line)[1:]  # without "harness"
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert ablate.Ladder(got["ab"], 2).stored() == ablate.Ladder(ab, 2).stored()
