"""Plugins as packages declare them (harness/plugins.py): a `harness.plugins` entry point of an
installed distribution, `module:function` (the function registers) or a plain module (importing it
registers), and a plugin named by module on sys.path. Each run records what it loaded, and a fresh
process that has the package importable but not installed (a Ray worker, `train --resume` elsewhere)
loads it again from that record alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner
from dbrows import rows

from harness import plugins
from harness.cli import main

TINY = ["--data", "synthetic", "--train-size", "64", "--image-size", "8", "--epochs", "1", "--threads", "1",
        "--batch-size", "16", "--recipe", "naive"]

NET = '''
import torch
from harness.models import ModelEntry, register as register_model


class Net(torch.nn.Module):
    def __init__(self, num_classes, in_chans, **_):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(in_chans, 4, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
        self.head = torch.nn.Linear(4, num_classes)

    def forward(self, x):
        return self.head(self.body(x))
'''


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


@pytest.fixture
def fresh_plugins(monkeypatch):
    """This process's plugin state as a new interpreter has it, restored after the test."""
    monkeypatch.setattr(plugins, "_LOADED", {})
    monkeypatch.setattr(plugins, "_entry_points_loaded", False)


@pytest.fixture
def installed(tmp_path, monkeypatch, fresh_plugins):
    """A distribution `ep-demo` installed in a site folder (its *.dist-info with METADATA and
    entry_points.txt, what pip would write), its package `ep_demo_pkg` in another folder on sys.path:
    a worker can then import the package without seeing the distribution."""
    site, code = tmp_path / "site", tmp_path / "code"
    write(site / "ep_demo-1.0.dist-info" / "METADATA", "Metadata-Version: 2.1\nName: ep-demo\nVersion: 1.0\n")
    write(site / "ep_demo-1.0.dist-info" / "entry_points.txt",
          "[harness.plugins]\nnets = ep_demo_pkg.nets:register\nrecipes = ep_demo_pkg.recipes\n")
    write(code / "ep_demo_pkg" / "__init__.py", "")
    # module:function — importing the module registers nothing; the function does.
    write(code / "ep_demo_pkg" / "nets.py", NET + '''
CALLS = []


def register():
    CALLS.append(1)
    register_model(ModelEntry("ep_net", "resnet", "ep_net", "an entry point's model", factory=Net))
''')
    # a plain module — importing it registers.
    write(code / "ep_demo_pkg" / "recipes.py", '''
from harness.recipes import get_recipe, register
register(get_recipe("naive").model_copy(update={"name": "ep_recipe", "lr": 2e-3}))
''')
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(code))
    yield site, code
    for name in [m for m in sys.modules if m.startswith("ep_demo_pkg")]:
        del sys.modules[name]


def test_entry_points_load_as_packaging_defines_them_and_train(installed, db_url, tmp_path):
    """`nets = ep_demo_pkg.nets:register` calls register() once; `recipes = ep_demo_pkg.recipes` imports
    the module; the model and recipe they register train through `harness train`, and the run records
    both references."""
    r = CliRunner().invoke(main, ["train", "--model", "ep_net", *TINY, "--recipe", "ep_recipe", "--db", db_url,
                                  "--checkpoint-dir", str(tmp_path / "ck")])
    assert r.exit_code == 0, r.output
    assert "epoch   1/1" in r.output
    assert sys.modules["ep_demo_pkg.nets"].CALLS == [1]
    (run,) = rows(db_url, "select model, recipe, status, params from runs")
    assert (run["model"], run["recipe"], run["status"]) == ("ep_net", "ep_recipe", "completed")
    assert json.loads(run["params"])["plugins"] == ["ep_demo_pkg.nets:register", "ep_demo_pkg.recipes"]


def test_resume_loads_entry_point_plugins_given_again_where_none_is_installed(installed, db_url, tmp_path):
    """A fresh interpreter where the package is importable but the distribution is not installed (no entry
    point to find): `train --resume` refuses the recorded `module:attr` and module (a checkpoint's plugins
    never load from the file alone), and loads them when given again with --plugin, so the run continues."""
    site, code = installed
    r = CliRunner().invoke(main, ["train", "--model", "ep_net", *TINY, "--recipe", "ep_recipe", "--db", db_url,
                                  "--checkpoint-dir", str(tmp_path / "ck")])
    assert r.exit_code == 0, r.output
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", "import importlib.metadata as m, sys; "
                          "sys.exit(len(m.entry_points(group='harness.plugins')))"], env=env, timeout=60)
    assert out.returncode == 0  # no harness.plugins entry point is visible there
    resume = ["train", "--resume", str(tmp_path / "ck" / "last.pt"), "--epochs", "2", "--db", db_url]
    out = subprocess.run([sys.executable, "-m", "harness.cli", *resume], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)
    assert out.returncode == 2 and "--plugin ep_demo_pkg.nets:register --plugin ep_demo_pkg.recipes" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-m", "harness.cli", "--plugin", "ep_demo_pkg.nets:register", "--plugin",
                          "ep_demo_pkg.recipes", *resume], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "epoch   2/2" in out.stdout
    got = rows(db_url, "select model, recipe, status from runs order by id")
    assert [tuple(g.values()) for g in got] == [("ep_net", "ep_recipe", "completed")] * 2


def test_plugin_named_as_module_on_sys_path(tmp_path, monkeypatch, fresh_plugins, db_url):
    """`--plugin my_module` (a module on sys.path/PYTHONPATH, not a file) and `--plugin module:function`."""
    write(tmp_path / "mods" / "byname_plugin.py", NET + '''
register_model(ModelEntry("byname_net", "resnet", "byname_net", "a module plugin's model", factory=Net))


def more():
    register_model(ModelEntry("byname_net2", "resnet", "byname_net2", "registered by a function", factory=Net))
''')
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    r = CliRunner().invoke(main, ["--plugin", "byname_plugin", "train", "--model", "byname_net", *TINY, "--db", db_url,
                                  "--checkpoint-dir", str(tmp_path / "ck")])
    assert r.exit_code == 0, r.output
    assert json.loads(rows(db_url, "select params from runs")[0]["params"])["plugins"] == ["byname_plugin"]
    r = CliRunner().invoke(main, ["--plugin", "byname_plugin:more", "models", "--image-size", "8"])
    assert r.exit_code == 0 and "byname_net2" in r.output, r.output
    for ref, fix in (("byname_plugin:nope", "Module byname_plugin has no nope"),
                     ("no_such_pkg_xyz:register", "No module of that name"),
                     ("not a module!", "Not a plugin reference")):
        r = CliRunner().invoke(main, ["--plugin", ref, "recipes"])
        assert r.exit_code == 2, r.output
        assert f"error: --plugin: got {ref!r}" in r.output and fix in r.output, r.output
    for name in ("byname_plugin",):
        sys.modules.pop(name, None)
