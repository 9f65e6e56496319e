"""`harness export`: a run's trained model handed back. The weights load through timm's own path, as the
model card says, and give the test accuracy the run recorded; bad requests are refused before any file."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from dbrows import rows

from harness.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def load_as_the_card_says(card: Path) -> torch.nn.Module:
    """The model built by the one line the model card gives, run as written."""
    (call,) = re.findall(r"^- \*\*Load\*\*: `(timm\.create_model\(.*\))`$", card.read_text(), flags=re.M)
    return eval(call, {"timm": timm})  # noqa: S307 - the card's own instruction, written by this code


def test_accuracy_of(model: torch.nn.Module, params: dict) -> float:
    """The model scored on the run's own test split, as the run scored itself."""
    from harness import data as data_mod
    from harness.evaluate import score_test
    from harness.specs import RunSpec

    spec = RunSpec.model_validate(params)
    ds = data_mod.load(spec.data, torch.device("cpu"))
    augment = data_mod.BatchAugment(ds, None, device=torch.device("cpu"))
    return score_test(model, ds.test, augment, batch_size=64, autocast=contextlib.nullcontext)["test_acc"]


test_accuracy_of.__test__ = False  # a helper, not a test


def test_export_round_trip_through_timm(db_url, tmp_path):
    """A `harness train` run with an EMA (the weights scored are the EMA's): exported, loaded by timm with
    pretrained_cfg_overlay, it scores exactly the test accuracy the run recorded."""
    r = run("train", "--model", "vit_test", "--recipe", "vit", "--epochs", 2, "--db", db_url, "--checkpoint-dir",
            tmp_path / "ck", "--data", "synthetic", "--image-size", "16", "--threads", "1", "--set", "batch_size=16",
            "--set", "ema_decay=0.9")
    assert r.exit_code == 0, r.output
    (row,) = rows(db_url, "SELECT id, test_acc, params FROM runs")
    out = tmp_path / "export" / "model.pth"
    e = run("export", row["id"], "--out", out, "--db", db_url)
    assert e.exit_code == 0, e.output
    card = out.with_suffix(".md")
    assert out.is_file() and out.with_suffix(".recipe.yaml").is_file() and card.is_file()
    assert str(card) in e.output
    saved = torch.load(out, weights_only=True)
    assert not any(k.startswith(("module.", "optimizer")) for k in saved)  # a plain state dict, EMA prefix gone
    text = card.read_text()
    assert "the EMA of the final epoch's weights" in text and "held-out test images (95% Wilson interval" in text
    model = load_as_the_card_says(card)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())  # every tensor, the head included
    params = row["params"] if isinstance(row["params"], dict) else __import__("json").loads(row["params"])
    assert test_accuracy_of(model, params) == pytest.approx(row["test_acc"], abs=1e-12)


@pytest.mark.parametrize("args, says", [
    (["99"], "No run 99 in"),
    (["1"], "Run 1 kept no checkpoint"),
])
def test_export_refusals(db_url, tmp_path, monkeypatch, args, says):
    monkeypatch.chdir(tmp_path)  # the run's checkpoints/run-1, then removed: a run that kept none
    assert run("train", "--model", "resnet_test", "--recipe", "naive", "--epochs", 1, "--db", db_url, "--data",
               "synthetic", "--image-size", "16", "--threads", "1").exit_code == 0
    __import__("shutil").rmtree(tmp_path / "checkpoints")
    out = tmp_path / "m.pth"
    e = run("export", *args, "--out", out, "--db", db_url)
    assert e.exit_code == 2 and says in e.output, e.output
    assert not out.exists() and not out.with_suffix(".md").exists()
