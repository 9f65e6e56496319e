"""Shared fixtures: a fresh SQLite database per test and tiny, fast run specs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'results.db'}"


@pytest.fixture
def tiny_data():
    from harness.data import DataSpec

    return DataSpec(name="synthetic", image_size=16, num_classes=4, train_size=64)


@pytest.fixture
def tiny_spec(tiny_data):
    """A resnet18 run on 64 synthetic 16 px images: a full epoch in well under a second."""
    from harness.specs import resolve_run

    def make(**fields):
        fields.setdefault("epochs", 2)
        fields.setdefault("threads", 1)
        overrides = fields.pop("overrides", {"batch_size": 16})
        return resolve_run(model=fields.pop("model", "resnet18"), recipe=fields.pop("recipe", "naive"),
                           data=fields.pop("data", tiny_data), overrides=overrides, **fields)

    return make


@pytest.fixture
def fault_plugin(tmp_path):
    """fault_plugin({"*": {"raise_at_step": 9}}) -> the path of a copy of tests/plugins/faults.py with
    that plan beside it, loaded in this process (pass it as `--plugin PATH` to a subprocess)."""
    import json
    import shutil
    from pathlib import Path

    from harness import plugins

    def make(plan: dict, folder: str = "fault_plugin") -> Path:
        where = tmp_path / folder
        where.mkdir(exist_ok=True)
        path = Path(shutil.copy(Path(__file__).parent / "plugins" / "faults.py", where / "faults.py"))
        (where / "faults.json").write_text(json.dumps(plan))
        plugins.load([str(path)])
        return path

    return make
