"""A winning recipe handed back as a file (harness/recipe_file.py): written whole, read back equal, run by
`harness train --recipe FILE` and a study's `recipe: FILE` as written (no refit), refused with the field
when wrong; and the same recipe as timm train.py flags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from dbrows import rows

from harness.cli import main
from harness.datasets import DataSpec
from harness.errors import UserError
from harness.recipe_file import is_recipe_file, load_recipe_file, timm_train_flags, write_recipe_file
from harness.recipes import RECIPES, Budget, Recipe, fit_recipe
from harness.specs import resolve_run

TINY_DATA = ["--data", "synthetic", "--image-size", "16", "--train-size", "64", "--threads", "1"]
COMMENT = ["The best of 3 lrs for vit_tiny on synthetic, chosen on validation (val acc 31.2%).",
           "Test acc, reported and not used to choose: 29.7%."]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def fitted_vit() -> Recipe:
    """vit fitted to a 1-epoch run of vit_tiny on 64 synthetic images at batch 16, with a changed lr
    (as an lr axis or a sweep hands it back)."""
    data = DataSpec(name="synthetic", image_size=16, train_size=64)
    spec = resolve_run(model="vit_tiny", recipe="vit", data=data, overrides={"batch_size": 16}, epochs=1)
    assert spec.recipe.form == "fitted" and spec.recipe.fit_notes
    return spec.recipe.model_copy(update={"lr": 1.5e-3})


@pytest.fixture
def recipe_path(fitted_vit, tmp_path) -> Path:
    return write_recipe_file(fitted_vit, tmp_path / "recipes" / "best.yaml", comment=COMMENT)


def stored_recipe(db: str) -> Recipe:
    (row,) = rows(db, "select params from runs")
    params = row["params"] if isinstance(row["params"], dict) else json.loads(row["params"])
    return Recipe.model_validate(params["recipe"])


# --- the file ---------------------------------------------------------------------------------------

def test_file_holds_every_field_in_order_under_the_comment_and_reads_back_equal(fitted_vit, recipe_path):
    text = recipe_path.read_text()
    lines = text.splitlines()
    assert lines[:2] == [f"# {c}" for c in COMMENT]
    data = yaml.safe_load(text)
    assert list(data) == list(Recipe.model_fields)  # every field, in the model's order
    assert data["lr"] == 1.5e-3 and data["form"] == "fitted" and data["fit_notes"] == list(fitted_vit.fit_notes)
    assert load_recipe_file(recipe_path, "--recipe") == fitted_vit
    assert not list(recipe_path.parent.glob(".*tmp*"))  # written atomically: no temp file left


def test_is_recipe_file():
    assert all(map(is_recipe_file, ["best.yaml", "best.YML", "out/recipes/x", "./vit", "/abs/r.yaml"]))
    assert not any(map(is_recipe_file, ["vit", "vit@published", "fitted", "tuned", "published", "cnn_ft"]))


def test_the_module_imports_no_torch_timm_or_ray():
    code = ("import sys, harness.recipe_file, harness.specs; "
            "print(sorted(m for m in ('torch', 'timm', 'ray', 'optuna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("change,field,fix", [
    ({"lrr": 0.001}, "--recipe.lrr", "Unknown key. Did you mean 'lr'"),
    ({"lr": -1}, "--recipe.lr", "Input should be greater than 0"),
    ({"schedule": "linear"}, "--recipe.schedule", "Input should be 'cosine' or 'step'"),
])
def test_a_bad_key_or_value_is_one_user_error_naming_the_field(recipe_path, change, field, fix):
    data = yaml.safe_load(recipe_path.read_text())
    recipe_path.write_text(yaml.safe_dump({**data, **change}, sort_keys=False))
    with pytest.raises(UserError) as e:
        load_recipe_file(recipe_path, "--recipe")
    assert e.value.field == field and fix in e.value.fix and str(recipe_path) in e.value.fix
    assert e.value.value == next(iter(change.values()))


@pytest.mark.parametrize("text,fix", [(None, "No such recipe file"), ("", "The file is empty"),
                                      ("- lr: 1", "Expected a mapping"), ("lr: [1", "Fix the YAML syntax")])
def test_a_missing_empty_or_broken_file_is_refused_under_the_field(tmp_path, text, fix):
    path = tmp_path / "r.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UserError) as e:
        load_recipe_file(path, "recipe")
    assert (e.value.field, e.value.value) == ("recipe", str(path)) and fix in e.value.fix


# --- harness train --recipe FILE ---------------------------------------------------------------------

def test_train_runs_the_file_as_written(recipe_path, fitted_vit, db_url, tmp_path):
    r = run("train", "--model", "vit_tiny", "--recipe", recipe_path, "--epochs", 1, "--db", db_url,
            "--checkpoint-dir", tmp_path / "ck", *TINY_DATA)
    assert r.exit_code == 0, r.output
    assert stored_recipe(db_url) == fitted_vit  # no refit: the file's values, fit_notes and name included
    assert f"lr {fitted_vit.scaled_lr():.3g} at batch 16" in r.output


def test_set_overrides_and_batch_size_rescales_the_files_lr_by_its_rule(recipe_path, fitted_vit, db_url, tmp_path):
    r = run("train", "--model", "vit_tiny", "--recipe", recipe_path, "--epochs", 1, "--db", db_url, "--batch-size", 32,
            "--set", "lr=0.004", "--set", "weight_decay=0.1", "--checkpoint-dir", tmp_path / "ck", *TINY_DATA)
    assert r.exit_code == 0, r.output
    got = stored_recipe(db_url)
    assert got == fitted_vit.model_copy(update={"lr": 0.004, "weight_decay": 0.1, "batch_size": 32})
    assert fitted_vit.lr_rule == "linear" and got.scaled_lr() == pytest.approx(0.004 * 32 / fitted_vit.lr_base_batch)


def test_batch_size_alone_rescales_the_lr_by_the_files_rule(recipe_path, fitted_vit, tiny_data):
    spec = resolve_run(model="vit_tiny", recipe=str(recipe_path), data=tiny_data, batch_size=64, epochs=1)
    assert spec.recipe == fitted_vit.model_copy(update={"batch_size": 64})  # nothing else refitted
    assert spec.recipe.scaled_lr() == pytest.approx(fitted_vit.scaled_lr() * 64 / 16)
    sqrt = recipe_path.with_name("sqrt.yaml")
    write_recipe_file(fitted_vit.model_copy(update={"lr_rule": "sqrt"}), sqrt)
    spec = resolve_run(model="vit_tiny", recipe=str(sqrt), data=tiny_data, batch_size=64, epochs=1)
    assert spec.recipe.scaled_lr() == pytest.approx(1.5e-3 * (64 / fitted_vit.lr_base_batch) ** 0.5)


def test_train_with_a_typo_in_the_file_exits_2_and_writes_nothing(recipe_path, tmp_path):
    text = recipe_path.read_text().replace("\nweight_decay:", "\nweight_decy:")
    recipe_path.write_text(text)
    db = tmp_path / "results.db"
    r = CliRunner().invoke(main, ["train", "--model", "vit_tiny", "--recipe", str(recipe_path), "--db", f"sqlite:///{db}",
                                  *TINY_DATA])
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: --recipe.weight_decy: got 0.05. Unknown key. Did you mean 'weight_decay'"), r.output
    assert len(r.output.strip().splitlines()) == 1 and not db.exists()


# --- a study's recipe: FILE ------------------------------------------------------------------------

def write_study(path: Path, recipe: str, **extra) -> Path:
    study = {"name": "from_file", "model": "vit_tiny", "recipe": recipe,
             "data": {"name": "synthetic", "image_size": 16, "train_size": 64},
             "search": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
             "fixed": {"weight_decay": 0.1}, "scheduler": {"type": "asha", "max_epochs": 3, "grace_period": 2},
             "trials": 2, "resources": {"cpu": 1, "gpu": 0}, **extra}
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_study_with_a_recipe_file_validates_and_uses_it_with_fixed(recipe_path, fitted_vit, tmp_path, monkeypatch):
    from harness.specs import load_study

    monkeypatch.chdir(recipe_path.parent)  # a relative path is from the current folder
    for ref in (str(recipe_path), "best.yaml"):
        study = write_study(tmp_path / "study.yaml", ref)
        r = CliRunner().invoke(main, ["sweep", "--validate", str(study)])
        assert r.exit_code == 0, r.output
        assert f"{study}: ok — study 'from_file'" in r.output and "(vit (fitted) recipe)" in r.output
        assert load_study(study).base_recipe() == fitted_vit.model_copy(update={"weight_decay": 0.1})


@pytest.mark.parametrize("break_it,field,fix", [
    (lambda p: p.unlink(), "recipe", "No such recipe file"),
    (lambda p: p.write_text(p.read_text().replace("\nlr:", "\nlr_:")), "recipe.lr_", "Did you mean 'lr'"),
    (lambda p: p.write_text(p.read_text().replace("\nhflip: 0.5", "\nhflip: 2")), "recipe.hflip", "less than or equal to 1"),
])
def test_a_study_with_a_missing_or_bad_recipe_file_exits_2(recipe_path, tmp_path, break_it, field, fix):
    study = write_study(tmp_path / "study.yaml", str(recipe_path))
    break_it(recipe_path)
    r = CliRunner().invoke(main, ["sweep", "--validate", str(study)])
    assert r.exit_code == 2, r.output
    assert f"error: {study}: {field}: got " in r.output and fix in r.output, r.output


def test_a_studys_fixed_key_is_checked_against_the_file(recipe_path, tmp_path):
    study = write_study(tmp_path / "study.yaml", str(recipe_path), fixed={"lr": -1})
    r = CliRunner().invoke(main, ["sweep", "--validate", str(study)])
    assert r.exit_code == 2 and f"error: {study}: fixed.lr: got -1." in r.output, r.output


# --- timm train.py flags -----------------------------------------------------------------------------

def test_timm_flags_of_the_fitted_vit():
    vit = fit_recipe(RECIPES["vit"], Budget(epochs=10, train_images=50_000, batch_size=128))
    assert timm_train_flags(vit, epochs=10) == (
        "--opt adamw --lr 0.000125 -b 128 --epochs 10 --sched cosine --sched-on-updates --warmup-epochs 1 "
        "--warmup-lr 1e-06 --min-lr 1e-05 --weight-decay 0.05 --clip-grad 1 --scale 0.9693 1 --color-jitter 0 "
        "--reprob 0.008333 --mixup 0.02667 --cutmix 0.03333 --drop-path 0.003333")


def test_timm_flags_turn_off_what_harness_does_not_do_and_note_what_train_py_cannot_say():
    naive = RECIPES["naive"]
    assert timm_train_flags(naive, epochs=9) == (
        "--opt adam --lr 0.001 -b 64 --epochs 9 --sched step --sched-on-updates --decay-epochs 3 --warmup-epochs 0 "
        "--weight-decay 0 --smoothing 0 --no-aug")
    effnet = fit_recipe(RECIPES["effnet"], Budget(epochs=10, train_images=50_000, batch_size=128))
    assert timm_train_flags(effnet, epochs=10) == (
        "--opt rmsproptf --lr 0.008 -b 128 --epochs 10 --sched step --sched-on-updates --decay-epochs 0.05333 "
        "--decay-rate 0.97 --warmup-epochs 0 --weight-decay 1e-05 --opt-eps 0.001 --scale 0.9796 1 --color-jitter 0 "
        "--reprob 0.004444 --drop-path 0.004444 --drop 0.004444 --model-ema --model-ema-decay 0.9808 --model-ema-warmup"
        "  # note: harness warms up for 0.06667 epochs; train.py's --warmup-epochs takes whole epochs (0 here)")
    odd = naive.model_copy(update={"weight_decay": 0.01, "crop": "pad", "hflip": 0.5, "loss": "bce", "layer_decay": 0.75,
                                   "pretrained": True, "momentum": 0.95})
    assert timm_train_flags(odd, epochs=3) == (
        "--opt adam --opt-kwargs filter_bias_and_bn=False --lr 0.001 -b 64 --epochs 3 --sched step --sched-on-updates "
        "--decay-epochs 1 --warmup-epochs 0 --weight-decay 0.01 --momentum 0.95 --layer-decay 0.75 --smoothing 0 "
        "--bce-loss --scale 1 1 --ratio 1 1 --color-jitter 0"
        "  # note: bce loss without mixup or smoothing: train.py then uses cross-entropy; crop=pad (a random crop of "
        "the image padded by 0.125 of its side, reflect) has no train.py flag: here the whole image, uncropped; "
        "a fine-tuning recipe: start from pretrained weights (--pretrained or --initial-checkpoint)")
