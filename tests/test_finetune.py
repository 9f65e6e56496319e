"""Fine-tuning from pretrained weights in benchmark, sweep and ablate: `pretrained:` in grids and studies
(and --pretrained / --pretrained-file), the family's fine-tuning recipe as the fitted one, the weights
recorded in the run and actually loaded in the Ray trial; foreign files and out-of-reach hub weights
refused before any row."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from dbrows import rows

from harness.cli import main
from harness.datasets import DataSpec
from harness.models import build_model, hub_weights_cached

DATA = {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 64}


@pytest.fixture
def weights(tmp_path) -> Path:
    """A vit_test state dict of this data's 4 classes, from an init no run here starts from (seed 123), its head
    scaled up so its loss is its own (a fresh tiny ViT's logits are near 0: any init scores about ln 4)."""
    torch.manual_seed(123)
    model = build_model("vit_test", num_classes=4, image_size=16)
    with torch.no_grad():
        model.get_classifier().weight.mul_(50)
    path = tmp_path / "source.pth"
    torch.save(model.state_dict(), path)
    return path


def val_loss_of(path: Path) -> float:
    """The weights' mean cross-entropy on the grid's validation split, as a run measures its epochs."""
    from harness import data as data_mod
    from harness.evaluate import evaluate
    from harness.models import get_model_entry, load_file_weights, read_state_dict

    model = build_model("vit_test", num_classes=4, image_size=16)
    load_file_weights(model, get_model_entry("vit_test"), read_state_dict(path), source=str(path))
    ds = data_mod.load(DataSpec(**DATA), torch.device("cpu"))
    augment = data_mod.BatchAugment(ds, None, device=torch.device("cpu"))
    return evaluate(model, ds.val, augment, batch_size=32, autocast=contextlib.nullcontext)[0]


@pytest.mark.slow
def test_a_benchmark_fine_tunes_from_the_file(ray_local, tmp_path, weights):
    """naive vs the fine-tuning recipe from the same weights, through Ray: each run records the file and its
    digest, the fitted recipe is vit_ft, and at an lr of 1e-30 all along (nothing moves) the first epoch's val loss is
    the file's own: the trial trained from the file, not from a fresh init."""
    grid = tmp_path / "ft.yaml"
    grid.write_text(yaml.safe_dump({"name": "ft", "models": ["vit_test"], "recipes": ["naive", "tuned"], "epochs": 1, "seeds": 1,
                                    "batch_size": 16, "data": DATA, "concurrency": 2,
                                    "set": {"lr": 1e-30, "warmup_lr": 1e-30, "min_lr": 1e-30}}))
    db = f"sqlite:///{tmp_path / 'r.db'}"
    r = CliRunner().invoke(main, ["benchmark", str(grid), "--pretrained-file", f"vit_test={weights}", "--db", db,
                                  "--out", str(tmp_path / "dash"), "--storage-path", str(tmp_path / "ray")])
    assert r.exit_code == 0, r.output
    got = rows(db, "SELECT r.recipe, r.params, e.val_loss FROM runs r JOIN epochs e ON e.run_id = r.id ORDER BY r.id")
    assert sorted(g["recipe"] for g in got) == ["naive", "vit_ft (fitted)"]
    expected = val_loss_of(weights)
    assert abs(expected - 1.386) > 0.5  # far from what a fresh init scores
    for g in got:
        params = g["params"] if isinstance(g["params"], dict) else json.loads(g["params"])
        assert params["pretrained_file"] == str(weights.resolve())
        assert params["tags"]["weights"].startswith("source.pth sha256:")
        assert g["val_loss"] == pytest.approx(expected, rel=1e-5), (g["val_loss"], expected)


def test_a_study_and_an_ablation_resolve_to_fine_tuning(tmp_path, weights):
    """A study's `pretrained:` and `ablate --pretrained-file` give runs that start from the file, with the
    family's fine-tuning recipe (layer decay among the ablation's ingredients)."""
    from harness.ablate import resolve_ablation
    from harness.specs import StudySpec, parse_spec
    from harness.sweep import _base_run

    study = parse_spec(StudySpec, {"name": "s", "model": "vit_test", "recipe": "tuned", "data": DATA,
                                   "search": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}}, "trials": 2,
                                   "pretrained": {"vit_test": str(weights)}}, "study")
    base = _base_run(study)
    assert base.recipe.name == "vit_ft" and base.pretrained_file == weights.resolve()
    assert base.tags["weights"].startswith("source.pth sha256:")
    ab = resolve_ablation("vit_test", pretrained={"vit_test": str(weights)}, data=DataSpec(**DATA), epochs=2)
    assert ab.end.name == "vit_ft" and "layer_decay" in ab.steps
    assert {r.pretrained_file for r in ab.runs} == {weights.resolve()}


@pytest.mark.parametrize("case", ["foreign", "missing"])
def test_a_bad_file_is_refused_before_any_row(tmp_path, case):
    if case == "foreign":  # a ResNet's weights for a ViT
        path = tmp_path / "resnet.pth"
        torch.save(build_model("resnet_test", num_classes=4, image_size=16).state_dict(), path)
    else:
        path = tmp_path / "nowhere.pth"
    db = tmp_path / "r.db"
    r = CliRunner().invoke(main, ["benchmark", "--models", "vit_test", "--data", "synthetic", "--image-size", "16",
                                  "--epochs", "1", "--pretrained-file", str(path), "--db", f"sqlite:///{db}",
                                  "--out", str(tmp_path / "dash")])
    assert r.exit_code == 2 and "--pretrained-file" in r.output and "Traceback" not in r.output, r.output
    assert not db.exists() and not (tmp_path / "dash").exists()


def test_hub_weights_offline_exit_2_with_where_timm_looked(tmp_path, monkeypatch):
    """An empty Hugging Face cache (as on these machines; made empty here so the test runs anywhere)."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    assert not hub_weights_cached("vit_test")[0]
    db = tmp_path / "r.db"
    r = CliRunner().invoke(main, ["benchmark", "--models", "vit_test", "--data", "synthetic", "--image-size", "16",
                                  "--epochs", "1", "--pretrained", "--db", f"sqlite:///{db}", "--out", str(tmp_path / "d")])
    assert r.exit_code == 2 and "not in the local Hugging Face cache (looked for" in r.output, r.output
    assert "--pretrained-file PATH" in r.output and not db.exists()
    r = CliRunner().invoke(main, ["train", "--model", "vit_test", "--data", "synthetic", "--image-size", "16",  # one run: the same refusal
                                  "--epochs", "1", "--pretrained", "--db", f"sqlite:///{db}"])
    assert r.exit_code == 2 and "not in the local Hugging Face cache (looked for" in r.output, r.output
    assert not db.exists()
