"""Plugins: a user's own model, dataset and recipe, registered from a file or module and used by
every command; workers and resumed runs load them again (harness/plugins.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from click.testing import CliRunner
from dbrows import rows

from harness.cli import main

PLUGIN = '''
import torch
from harness.datasets import DatasetEntry, register as register_dataset
from harness.models import ModelEntry, register as register_model
from harness.recipes import Recipe, get_recipe, register as register_recipe


class TinyNet(torch.nn.Module):
    """Not a timm model at all: the user's own."""

    def __init__(self, num_classes, image_size, in_chans, **_):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(in_chans, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def load_stripes(spec):
    from harness.data import Dataset, TensorSplit

    g = torch.Generator().manual_seed(spec.split_seed)
    y = torch.arange(120) % 2
    x = torch.zeros(120, 3, spec.image_size, spec.image_size, dtype=torch.uint8)
    x[y == 0, :, ::2] = 255  # horizontal stripes
    x[y == 1, :, :, ::2] = 255  # vertical stripes
    x = (x.float() * 0.8 + torch.rand(x.shape, generator=g) * 50).clamp(0, 255).to(torch.uint8)
    return Dataset("stripes", 2, ["h", "v"], spec.image_size, TensorSplit(x[:96], y[:96]), TensorSplit(x[96:], y[96:]),
                   hflip=False, description="stripes (a plugin's set)")


register_model(ModelEntry("tinynet", "resnet", "tinynet", "a plugin's own CNN", factory=TinyNet))
register_dataset(DatasetEntry("stripes", load_stripes, lambda spec: 96))
register_recipe(get_recipe("naive").model_copy(update={"name": "naive_fast", "lr": 3e-3}))
'''


def write_plugin(tmp_path):
    path = tmp_path / "my_plugin.py"
    path.write_text(textwrap.dedent(PLUGIN))
    return path


def test_plugin_model_dataset_recipe_train_and_resume(tmp_path, db_url, monkeypatch):
    """A model, a dataset and a recipe from a plugin file train through `harness --plugin FILE train`;
    the checkpoint remembers the plugin, and `train --resume` in a fresh process loads it when given again
    (a checkpoint's plugins never load from the file alone: tests/test_safety.py)."""
    from harness import plugins

    # A user's `harness train` process has loaded only its own plugins; this test process has loaded other
    # tests' too, which the checkpoint would then name (and the resume, given only this one, would refuse).
    monkeypatch.setattr(plugins, "_LOADED", {})
    plugin = write_plugin(tmp_path)
    res = CliRunner().invoke(main, ["--plugin", str(plugin), "train", "--model", "tinynet", "--recipe", "naive_fast",
                                    "--data", "stripes", "--image-size", "8", "--epochs", "2", "--threads", "1",
                                    "--batch-size", "16", "--db", db_url, "--checkpoint-dir", str(tmp_path / "ck")])
    assert res.exit_code == 0, res.output
    assert "epoch   2/2" in res.output
    # A fresh interpreter that never heard of the plugin resumes (and extends) the run from its checkpoint.
    out = subprocess.run([sys.executable, "-m", "harness.cli", "--plugin", str(plugin), "train", "--resume",
                          str(tmp_path / "ck" / "last.pt"), "--epochs", "3", "--db", db_url], capture_output=True,
                         text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    # It resumed: only epoch 3 trained in the new process (a restart from epoch 1 also prints "epoch   3/3").
    assert f"resumed from {tmp_path / 'ck' / 'last.pt'} at epoch 2" in out.stdout, out.stdout
    assert "epoch   3/3" in out.stdout and "epoch   1/3" not in out.stdout and "epoch   2/3" not in out.stdout
    runs = rows(db_url, "SELECT id, model, recipe, status, epochs_done, best_val_acc, final_val_acc FROM runs ORDER BY id")
    assert [(r["model"], r["recipe"], r["status"], r["epochs_done"]) for r in runs] == [
        ("tinynet", "naive_fast", "completed", 2), ("tinynet", "naive_fast", "completed", 3)]
    first, second = (rows(db_url, f"SELECT * FROM epochs WHERE run_id = {r['id']} ORDER BY epoch") for r in runs)
    assert [e["epoch"] for e in first] == [1, 2] and [e["epoch"] for e in second] == [1, 2, 3]  # each once
    metrics = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "grad_norm")
    # Epochs 1-2 of the resumed run are the first run's, carried in the checkpoint; epoch 3 was trained after them.
    assert [{k: e[k] for k in metrics} for e in second[:2]] == [{k: e[k] for k in metrics} for e in first]
    assert all(second[2][k] is not None for k in metrics) and second[2]["val_acc"] == runs[1]["final_val_acc"]
    assert runs[1]["best_val_acc"] == max(e["val_acc"] for e in second)


def test_missing_plugin_is_bad_input(tmp_path):
    for ref, fix in ((str(tmp_path / "nope.py"), "No such plugin file"), ("no_such_module_xyz", "No module of that name")):
        res = CliRunner().invoke(main, ["--plugin", ref, "recipes"])
        assert res.exit_code == 2, res.output
        assert "--plugin" in res.output and ref in res.output and fix in res.output, res.output


def test_unknown_plugin_model_still_refused_with_close_matches(tmp_path):
    plugin = write_plugin(tmp_path)
    res = CliRunner().invoke(main, ["--plugin", str(plugin), "train", "--model", "tinynett", "--data", "stripes",
                                    "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert res.exit_code == 2 and "tinynet" in res.output, res.output
    assert not (tmp_path / "r.db").exists()
