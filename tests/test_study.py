"""Study warnings: valid studies that would still measure the wrong thing (no torch, timm or Ray)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.study import longest_warmup, study_warnings, validate_study

STUDY = {
    "name": "t_warm",
    "model": "resnet18",
    "recipe": "vit",
    "data": {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 64},
    "search": {"lr": {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-2},
               "warmup_epochs": {"type": "int", "low": 0, "high": 3}},
    "fixed": {"batch_size": 16},
    "scheduler": {"type": "asha", "max_epochs": 6, "grace_period": 1, "reduction_factor": 3},
    "trials": 4,
}


def study(tmp_path: Path, **changes):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({**STUDY, **changes}, sort_keys=False))
    return validate_study(path), path


def test_grace_period_inside_the_searched_warmup_warns_with_the_fix(tmp_path):
    """ASHA cutting after epoch 1 while trials may warm up for 3 epochs compares lr ramps: warned
    (field, value, fix), not refused."""
    s, path = study(tmp_path)
    assert longest_warmup(s) == (3.0, "search.warmup_epochs.high")
    (w,) = study_warnings(s, path)
    assert w.startswith(f"{path}: scheduler.grace_period: got 1. ")
    assert "up to 3 epochs" in w and "compares lr ramps, not recipes" in w
    assert "set scheduler.grace_period to at least 4 (the longest warmup, 3 epochs, + 1)" in w
    assert "or search warmup_epochs only below 1." in w


@pytest.mark.parametrize("changes", [
    {"scheduler": {"type": "asha", "max_epochs": 6, "grace_period": 4}},  # grace beyond the longest warmup
    {"scheduler": {"type": "none", "max_epochs": 6}},  # no early stopping: nothing cut during warmup
    {"search": {"lr": {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-2}},
     "fixed": {"batch_size": 16, "warmup_epochs": 0}},  # no warmup at all
])
def test_no_warning_when_the_first_cut_comes_after_every_warmup(tmp_path, changes):
    s, path = study(tmp_path, **changes)
    assert study_warnings(s, path) == []


def test_warmup_from_choice_fixed_and_fitted_recipe(tmp_path):
    s, _ = study(tmp_path, search={"warmup_epochs": {"type": "choice", "values": [0, 2, 1]}})
    assert longest_warmup(s) == (2.0, "search.warmup_epochs.values")
    s, _ = study(tmp_path, search={"lr": {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-2}},
                 fixed={"batch_size": 16, "warmup_epochs": 2})
    assert longest_warmup(s) == (2.0, "fixed.warmup_epochs")
    (w,) = study_warnings(s)
    assert "at least 3" in w and "or set fixed.warmup_epochs below 1" in w
    s, _ = study(tmp_path, search={"lr": {"type": "loguniform", "low": 1.0e-5, "high": 1.0e-2}})
    assert longest_warmup(s) == (s.base_recipe().warmup_epochs, "the fitted recipe's warmup_epochs")


def test_fix_names_max_epochs_when_the_warmup_fills_the_run(tmp_path):
    s, _ = study(tmp_path, scheduler={"type": "asha", "max_epochs": 3, "grace_period": 2},
                 search={"warmup_epochs": {"type": "uniform", "low": 0, "high": 3}})
    (w,) = study_warnings(s)
    assert "raise scheduler.max_epochs well above 4 and grace_period to at least 4" in w


def test_study_warnings_import_no_torch_timm_or_ray(tmp_path):
    _, path = study(tmp_path)
    code = ("import sys; from harness.study import validate_study, study_warnings; "
            f"w = study_warnings(validate_study({str(path)!r})); assert len(w) == 1; "
            "print(sorted(m for m in ('torch', 'timm', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
