"""Sweeps and the benchmark grid through Ray Tune, for real: Ray local (2 CPUs), resnet18 on 64
synthetic 16 px images, the results database checked row by row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray for the module (ray.init costs seconds); run_grid/run_sweep reuse it."""
    import ray

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def rows(db_url: str, query: str, **params):
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as c:
            return [dict(r) for r in c.execute(sa.text(query), params).mappings()]
    finally:
        engine.dispose()


@pytest.mark.slow
def test_run_grid_records_every_run_and_epoch(ray_local, tiny_spec, db_url, tmp_path):
    """Every RunSpec becomes one completed `runs` row with all its epochs and an evaluation."""
    from harness.specs import ResourcesSpec
    from harness.sweep import run_grid

    specs = [tiny_spec(recipe="naive", epochs=2), tiny_spec(recipe="cnn", epochs=3)]
    lines: list[str] = []
    exp = run_grid(specs, db=db_url, experiment_name="grid", concurrency=2, resources=ResourcesSpec(cpu=1),
                   storage_path=tmp_path / "ray", echo=lines.append)
    got = rows(db_url, "SELECT id, recipe, status, epochs_done, trial_id FROM runs WHERE experiment_id = :e ORDER BY id", e=exp)
    assert [(r["recipe"], r["status"], r["epochs_done"]) for r in got] == [("naive", "completed", 2), ("cnn", "completed", 3)]
    assert all(r["trial_id"] for r in got)
    epochs = rows(db_url, "SELECT run_id, epoch FROM epochs ORDER BY run_id, epoch")
    assert [(e["run_id"], e["epoch"]) for e in epochs] == [(got[0]["id"], 1), (got[0]["id"], 2),
                                                          (got[1]["id"], 1), (got[1]["id"], 2), (got[1]["id"], 3)]
    assert len(rows(db_url, "SELECT run_id FROM evaluations")) == 2
    (e,) = rows(db_url, "SELECT kind, status FROM experiments WHERE id = :e", e=exp)
    assert e == {"kind": "benchmark", "status": "completed"}
    assert any("completed" in ln for ln in lines) and str(tmp_path / "ray") in lines[-1]
