"""`harness benchmark`: grid resolution (all, fitted, scale), bad input refused before anything is
written, and one real grid through Ray Tune to the table and the dashboards."""

from __future__ import annotations

import json
import re

import pytest
import torch
import yaml
from click.testing import CliRunner

from harness.benchmark import default_grid, load_grid, resolve_grid
from harness.cli import main
from harness.errors import UserError
from harness.models import ALL, CPU_VARIANT, MODELS
from harness.recipes import family_recipe_name


def test_default_grid_is_all_models_naive_vs_fitted_on_cpu_stand_ins():
    spec = load_grid(None)
    assert default_grid().name == "naive_vs_recipe.yaml"
    grid = resolve_grid(spec, cuda=False)
    assert grid.scale == "tiny" and spec.seeds == "auto"
    first = [r for r in grid.runs if r.seed == 0]
    assert [(r.model, r.stands_for, r.recipe.name) for r in first] == [
        (CPU_VARIANT[m], m, rec) for m in ALL for rec in ("naive", family_recipe_name(MODELS[m].family))]
    # --seeds auto: every seed up to the cap is in the grid, tagged; the looks start each model with seeds 0 and 1.
    assert len(grid.runs) == 4 * 2 * 5 and all(r.tags["seed_rule"] == "auto" for r in grid.runs)
    assert len(grid.seed_groups) == 4 and all(len(g) == 5 and all(len(s) == 2 for s in g) for g in grid.seed_groups)
    g0 = grid.seed_groups[0]
    assert {(grid.runs[i].model, grid.runs[i].seed) for i in g0[1]} == {(CPU_VARIANT[ALL[0]], 1)}
    assert all(r.epochs == spec.epochs and r.data == spec.data and r.threads == 1 for r in grid.runs)
    assert grid.note.startswith("CPU: running resnet18 for resnet50, efficientnet_b0 for efficientnet_b3, "
                                "vit_tiny for vit_base, swin_nano for swin_tiny; use --scale full")
    assert all(r.label() == f"{r.model} (CPU stand-in for {r.stands_for})" for r in grid.runs)


def test_cuda_runs_the_full_models_and_flags_override_the_file():
    spec = load_grid(None, models="vit_base,resnet50", recipes="fitted", epochs=3, seeds=2, image_size=32)
    grid = resolve_grid(spec, cuda=True)
    assert grid.note is None and grid.scale == "full"
    assert [(r.model, r.recipe.name, r.seed, r.stands_for) for r in grid.runs] == [
        ("vit_base", "vit", 0, None), ("vit_base", "vit", 1, None), ("resnet50", "cnn", 0, None), ("resnet50", "cnn", 1, None)]
    assert {r.epochs for r in grid.runs} == {3} and {r.data.image_size for r in grid.runs} == {32}
    tiny = resolve_grid(load_grid(None, models="vit_base", scale="tiny"), cuda=True)
    assert tiny.runs[0].model == "vit_tiny" and tiny.note.startswith("--scale tiny: running vit_tiny for vit_base")
    full = resolve_grid(load_grid(None, models="swin_tiny", scale="full"), cuda=False)
    assert full.runs[0].model == "swin_tiny" and full.note is None


def test_grid_file_and_set_overrides(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text(yaml.safe_dump({"name": "mine", "models": "resnet18,vit_tiny", "recipes": ["naive", "vit"], "epochs": 1, "seeds": 1,
                                 "data": {"name": "synthetic", "image_size": 16, "num_classes": 4}, "set": {"batch_size": 8}}))
    spec = load_grid(f, sets={"lr": 0.01})
    runs = resolve_grid(spec, cuda=False).runs
    assert [(r.model, r.recipe.name) for r in runs] == [("resnet18", "naive"), ("resnet18", "vit"), ("vit_tiny", "naive"),
                                                          ("vit_tiny", "vit")]
    assert all(r.recipe.batch_size == 8 and r.recipe.lr == 0.01 and r.stands_for is None for r in runs)


@pytest.mark.parametrize("args, message", [
    (["--models", "vit_bas"], r"--models: got 'vit_bas'\. Unknown name\. Did you mean 'vit_base'"),
    (["--models", "all,resnet5"], r"--models: got 'resnet5'\. Unknown name\. Did you mean 'resnet50'"),
    (["--models", ","], r"--models: got ','\. Give at least one name"),
    (["--recipes", "naive,fittted"], r"--recipes: got 'fittted'\. Unknown name\. Did you mean 'fitted'"),
    (["--seeds", "0"], r"--seeds: got 0\. Use at least 1 seed"),
    (["--epochs", "0"], r"--epochs: got 0\. Use at least 1 epoch"),
    (["--epochs", "-3"], r"--epochs: got -3"),
    (["--data", "mnist"], r"data\.name: got 'mnist'\. Unknown name"),
    (["--image-size", "30", "--models", "swin_tiny"], r"image_size: got 30"),
    (["--set", "lr=-1"], r"lr"),
    (["--set", "nosuchknob=1"], r"nosuchknob"),
    (["missing.yaml"], r"missing\.yaml: got None\. No such file"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "results.db"
    r = CliRunner().invoke(main, ["benchmark", *args, "--db", f"sqlite:///{db}", "--out", str(tmp_path / "dash")])
    assert r.exit_code == 2, r.output
    assert re.search(message, r.output), r.output
    assert r.output.count("error:") == 1
    assert not db.exists() and not (tmp_path / "dash").exists()


def test_bad_grid_file_names_the_field(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("models: [resnet18]\nrecipes: [naive]\nepochs: 2\nsedes: 3\n")
    with pytest.raises(UserError, match=r"g\.yaml: sedes: .*Did you mean 'seeds'"):
        load_grid(f)
    f.write_text("models: [resnet18, vit_bsae]\n")
    with pytest.raises(UserError, match=r"g\.yaml: models: got 'vit_bsae'.*vit_base"):
        load_grid(f)


def test_db_that_is_not_a_harness_database_is_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    foreign = tmp_path / "foreign.db"
    import sqlite3

    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE runs (x)")
    for url in (f"sqlite:///{text}", f"sqlite:///{foreign}", "not a url", f"sqlite:///{tmp_path}"):
        r = CliRunner().invoke(main, ["benchmark", "--models", "resnet50", "--db", url, "--out", str(tmp_path / "d")])
        assert r.exit_code == 2 and "error: --db" in r.output, (url, r.output)
    assert not (tmp_path / "d").exists()
    (tmp_path / "afile").write_text("x")
    r = CliRunner().invoke(main, ["benchmark", "--models", "resnet50", "--db", f"sqlite:///{tmp_path / 'r.db'}",
                                  "--out", str(tmp_path / "afile")])
    assert r.exit_code == 2 and "error: --out" in r.output and not (tmp_path / "r.db").exists()


@pytest.mark.slow
def test_benchmark_end_to_end_through_ray(ray_local, tmp_path, monkeypatch):
    """A real grid through Ray Tune (2 recipes x an lr axis of 2 points): rows in the database with each run's
    test scores, the table printed and saved, dashboards, and the recommended recipe as a file that
    `harness train --recipe FILE` trains with."""
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "e2e", "models": ["resnet50"], "recipes": ["naive", "fitted"], "epochs": 2,
                                    "scale": "tiny", "data": {"name": "synthetic", "image_size": 16, "num_classes": 4,
                                                              "train_size": 64}, "set": {"batch_size": 16},
                                    "lrs": ["x1", "x3"], "seeds": 1}))
    db = f"sqlite:///{tmp_path / 'results.db'}"
    r = CliRunner().invoke(main, ["benchmark", str(grid), "--db", db, "--out", str(tmp_path / "dash")])
    assert r.exit_code == 0, r.output
    assert "CPU: running resnet18 for resnet50" in r.output or "running resnet18 for resnet50" in r.output
    assert "resnet18 (for resnet50)" in r.output and "naive → cnn (fitted)" in r.output
    from harness.store import Store

    store = Store(db, create=False)
    runs = store.read_sql("SELECT * FROM runs")
    epochs = store.read_sql("SELECT * FROM epochs")
    exp = store.read_sql("SELECT * FROM experiments").iloc[0]
    store.close()
    assert exp["kind"] == "benchmark" and exp["status"] == "completed"
    assert sorted(runs["recipe"]) == ["cnn (fitted)"] * 2 + ["naive"] * 2 and set(runs["status"]) == {"completed"}
    assert set(runs["stands_for"]) == {"resnet50"} and len(epochs) == 8
    # Every run scored its final weights once on the held-out test split (synthetic: 21 of 107 images).
    assert runs["test_acc"].notna().all() and set(runs["n_test"]) == {21} and runs["test_correct"].notna().all()
    out = tmp_path / "dash"
    eid = int(exp["id"])
    for name in ("index.html", f"before_after-{eid}.html", f"before_after-{eid}.md", f"before_after-{eid}.csv"):
        assert (out / name).is_file(), name
    assert str(out / "index.html") in r.output
    # The recipe handed back: the (recipe, lr) of the highest validation accuracy, its stored recipe as a file.
    path = out / "recipes" / f"recommended-{eid}-resnet18.yaml"
    assert f"recommended recipe for resnet18 (for resnet50): {path}" in r.output and "as timm train.py flags: --opt" in r.output
    chosen = runs.loc[runs["final_val_acc"].idxmax()]  # one seed per point: the highest val acc (ties: the first)
    from harness.recipe_file import load_recipe_file

    params = json.loads(chosen["params"]) if isinstance(chosen["params"], str) else chosen["params"]
    assert load_recipe_file(path, "recipe").model_dump(mode="json") == params["recipe"]
    # Its trained model, handed back from the Ray trial's checkpoint: timm loads it as the model card says,
    # and it scores the test accuracy the run recorded.
    from test_export import load_as_the_card_says, test_accuracy_of

    assert f"its trained model: harness export {int(chosen['id'])} --out resnet18.pth" in r.output
    e = CliRunner().invoke(main, ["export", str(int(chosen["id"])), "--out", "resnet18.pth", "--db", db])
    assert e.exit_code == 0, e.output
    assert test_accuracy_of(load_as_the_card_says(tmp_path / "resnet18.md"), params) == pytest.approx(chosen["test_acc"], abs=1e-12)
    # Each completed trial's stored checkpoint keeps its weights, not the optimizer nothing will resume.
    kept = list((tmp_path / "ray_results").glob("*/run_*/checkpoint_*/last.pt"))
    assert len(kept) == 4 and all(torch.load(k, weights_only=True)["optimizer"] is None for k in kept)
    t = CliRunner().invoke(main, ["train", "--model", "resnet18", "--recipe", str(path), "--data", "synthetic",
                                  "--image-size", "16", "--train-size", "64", "--epochs", "1", "--db", db])
    assert t.exit_code == 0, t.output
    store = Store(db, create=False)
    trained = store.read_sql("SELECT params FROM runs ORDER BY id DESC LIMIT 1").iloc[0]["params"]
    store.close()
    trained = json.loads(trained) if isinstance(trained, str) else trained
    assert trained["recipe"]["lr"] == load_recipe_file(path, "recipe").lr


def test_a_grid_counts_its_training_images_once(monkeypatch):
    """The budget's image count is read once per grid, not once per run: for an image folder it is a
    walk over every file."""
    import dataclasses

    from harness import datasets

    calls = []
    entry = datasets.DATASETS["digits"]
    monkeypatch.setitem(datasets.DATASETS, "digits", dataclasses.replace(
        entry, train_images=lambda spec: calls.append(spec) or entry.train_images(spec)))
    grid = resolve_grid(load_grid(None, models="vit_base,resnet50", recipes="naive,fitted", lrs="x1,x3", seeds=2), cuda=False)
    assert len(grid.runs) == 16 and len(calls) == 1


def test_continue_with_names_the_grid_file(tmp_path):
    """--resume finds an experiment by its grid's name: the continue-with line of a benchmark started from a grid
    file names that file (without it, the default grid's name would be looked up)."""
    from harness.benchmark import Benchmark
    from harness.experiment import Where, continue_with

    spec = load_grid(None, seeds=1)
    where = Where(db=f"sqlite:///{tmp_path / 'r.db'}", storage_path=tmp_path / "ray")
    grid = tmp_path / "my grid.yaml"
    assert continue_with(Benchmark(spec, False, grid), where).startswith(f"harness benchmark '{grid}' --resume --db ")
    assert continue_with(Benchmark(spec, False), where).startswith("harness benchmark --resume --db ")
