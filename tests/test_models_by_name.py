"""Any timm model by name: its family told from its module (no build), the registry's size rules, the
family given when it cannot be told, bad input refused with exit 2 and no row, and the shipped table
(`harness/model_facts.json`) true to the installed timm."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from harness.api import parse_families
from harness.cli import main
from harness.errors import UserError
from harness.families import FACTS_IMAGE_SIZE, MODULES, facts, registry_counts
from harness.models import MODELS, ModelName, declared_families, get_model_entry


def test_the_shipped_table_is_the_installed_timms():
    import timm
    from timm.models import model_entrypoint

    table = facts()
    assert table["timm"] == timm.__version__, "run `python -m harness.model_listing` after upgrading timm"
    assert set(table["models"]) == set(timm.list_models())
    for name, (module, _) in table["models"].items():
        assert model_entrypoint(name).__module__ == f"timm.models.{module}", name
    for module in MODULES:  # every module the family table names exists in this timm
        assert any(m == module for m, _ in table["models"].values()), module


@pytest.mark.parametrize("name", ["resnet_test", "vit_test"])
def test_shipped_counts_equal_a_real_build(name):
    from harness.models import build_model, count_params, forward_gflops

    model = build_model(name, num_classes=10, image_size=FACTS_IMAGE_SIZE)
    counts = registry_counts(name)
    assert counts["params"] == count_params(model)
    assert math.isclose(counts["gflops"], forward_gflops(model, FACTS_IMAGE_SIZE), rel_tol=1e-4)
    assert set(facts()["registry"]) == {n for n, e in MODELS.items() if e.factory is None}


@pytest.mark.parametrize("name,family,shape", [
    ("convnext_tiny", "swin", "cnn"), ("deit_tiny_patch16_224", "vit", "vit"), ("eva02_tiny_patch14_224", "vit", "vit"),
    ("beit_base_patch16_224", "vit", "vit"), ("swin_small_patch4_window7_224", "swin", "swin"),
    ("swinv2_tiny_window8_256", "swin", "swin"), ("resnext50_32x4d", "resnet", "cnn"), ("regnety_002", "resnet", "cnn"),
    ("efficientnet_b1", "efficientnet", "cnn"), ("resnet50.a1_in1k", "resnet", "cnn"),
])
def test_family_is_told_from_the_architecture(name, family, shape):
    entry = get_model_entry(name, "--models")
    assert (entry.family, entry.shape_rule, entry.by_name) == (family, shape, True)
    assert entry.why and entry.timm_name == name


@pytest.mark.parametrize("name,size,expected", [
    ("deit_tiny_patch16_224", 32, {"img_size": 32, "patch_size": 8}),
    ("eva02_tiny_patch14_224", 224, {"img_size": 224, "patch_size": 14}),
    ("swinv2_tiny_window8_256", 32, {"img_size": 32, "patch_size": 2, "window_size": 4}),
    ("swinv2_tiny_window8_256", 256, {}), ("convnext_tiny", 32, {}),
])
def test_by_name_models_follow_the_registrys_size_rules(name, size, expected):
    assert get_model_entry(name).size_kwargs(size) == expected


@pytest.mark.parametrize("name,size,says", [
    ("convnext_tiny", 16, "image size of 32 or more"), ("swinv2_tiny_window8_256", 224, "own input size, 256 px"),
    ("deit_tiny_patch16_224", 30, "divisible by its patch size"),
    (ModelName("maxvit_tiny_tf_224", "vit"), 32, "--image-size 224"),
])
def test_sizes_a_model_cannot_take_are_refused_naming_one_that_works(name, size, says):
    with pytest.raises(UserError, match="data.image_size") as e:
        get_model_entry(name, "--models").size_kwargs(size)
    assert says in str(e.value)


@pytest.mark.parametrize("name", ["deit_tiny_patch16_224", "convnext_atto", "swinv2_tiny_window8_256"])
def test_by_name_models_build_and_run_at_a_small_size(name):
    import torch

    from harness.models import build_model

    model = build_model(name, num_classes=10, image_size=32)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_family_not_told_needs_saying_and_travels_with_the_name():
    with pytest.raises(UserError, match=r"--models: got 'maxvit_tiny_tf_224'\. .*--family maxvit_tiny_tf_224=FAMILY"):
        get_model_entry("maxvit_tiny_tf_224", "--models")
    assert get_model_entry("maxvit_tiny_tf_224").family == ""  # a worker building it needs no family
    assert get_model_entry(ModelName("maxvit_tiny_tf_224", "vit"), "--models").family == "vit"
    with declared_families(parse_families("vit", models=["maxvit_tiny_tf_224"])):
        assert get_model_entry("maxvit_tiny_tf_224", "--model").family == "vit"
    with pytest.raises(UserError):  # given for one command only
        get_model_entry("maxvit_tiny_tf_224", "--model")
    with pytest.raises(UserError, match="registry model of family resnet.*--recipe vit"):
        get_model_entry(ModelName("resnet50", "vit"), "--models")


def test_a_grid_and_a_study_name_the_family_in_yaml(tmp_path):
    from harness.benchmark import load_grid
    from harness.specs import BenchmarkSpec, load_study, parse_spec

    grid = tmp_path / "g.yaml"
    grid.write_text("models: [convnext_tiny, {name: maxvit_tiny_tf_224, family: vit}]\ndata: {name: digits, image_size: 224}\n")
    spec = load_grid(grid)
    assert [getattr(m, "family", None) for m in spec.models] == [None, "vit"]
    again = parse_spec(BenchmarkSpec, yaml.safe_load(yaml.safe_dump(spec.model_dump(mode="json"))))  # as --resume reads it
    assert [getattr(m, "family", None) for m in again.models] == [None, "vit"]
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "model": {"name": "maxvit_tiny_tf_224", "family": "swin"}, "recipe": "fitted",
                                     "data": {"name": "digits", "image_size": 224}, "trials": 2,
                                     "search": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}}}))
    s = load_study(study)
    assert s.model.family == "swin" and s.base_recipe().name == "swin"


def test_a_by_name_run_records_its_family_and_why():
    from harness.benchmark import family_lines, resolve_grid
    from harness.specs import BenchmarkSpec, parse_spec

    spec = parse_spec(BenchmarkSpec, {"models": ["convnext_atto", "resnet_test"], "epochs": 1, "seeds": 1,
                                      "data": {"name": "digits", "image_size": 32}})
    grid = resolve_grid(spec, cuda=False)
    conv = [r for r in grid.runs if r.model == "convnext_atto"]
    assert {r.recipe.name for r in conv} == {"naive", "swin"}
    assert conv[0].tags["family"] == "swin" and "ConvNeXt" in conv[0].tags["family_why"]
    assert all("family" not in r.tags for r in grid.runs if r.model == "resnet_test")  # the registry's says it
    lines = family_lines(grid)
    assert len(lines) == 1 and lines[0].startswith("convnext_atto: family swin")


@pytest.mark.parametrize("args,field,says", [
    (["--models", "convnxt_tiny"], "--models", "or 'convnext_tiny'"),  # among the close matches (a plugin's may join them)
    (["--models", "maxvit_tiny_tf_224"], "--models", "--family maxvit_tiny_tf_224=FAMILY"),
    (["--models", "maxvit_tiny_tf_224", "--family", "vitt"], "--family", "Did you mean 'vit'"),
    (["--models", "convnext_tiny,resnet18", "--family", "vit"], "--family", "--family MODEL=FAMILY"),
    (["--models", "convnext_tiny", "--family", "resnet18=vit"], "--family", "not a model of this command"),
    (["--models", "convnext_tiny"], "data.image_size", "32 or more"),  # the default grid's 16 px
])
def test_bad_model_input_is_one_message_exit_2_and_no_row(tmp_path, args, field, says):
    db = tmp_path / "r.db"
    r = CliRunner().invoke(main, ["benchmark", *args, "--db", f"sqlite:///{db}", "--out", str(tmp_path / "d"),
                                  "--storage-path", str(tmp_path / "ray")])
    assert r.exit_code == 2, r.output
    assert r.output.startswith(f"error: {field}: got ") and says in r.output, r.output
    assert not db.exists()


def test_validating_a_study_of_a_timm_model_imports_no_torch(tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "model": "convnext_atto", "recipe": "fitted", "trials": 2,
                                     "resources": {"gpu": 0},  # gpu: auto counts the cards, with torch
                                     "search": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-3}}}))
    code = ("import sys; from harness.cli import main\n"
            f"try: main(['sweep', {str(study)!r}, '--validate'])\n"
            "except SystemExit as e: assert not e.code, e.code\n"
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    assert "convnext_atto" in done.stdout
