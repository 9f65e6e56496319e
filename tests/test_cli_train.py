"""`harness train`, `models`, `recipes` as a user runs them: exit codes, messages, database rows."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from dbrows import rows

from harness.cli import main

TINY = ["--data", "synthetic", "--image-size", "16", "--threads", "1", "--set", "batch_size=16"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_train_records_every_epoch(db_url, tmp_path):
    r = run("train", "--model", "resnet18", "--recipe", "naive", "--epochs", 3, "--db", db_url,
            "--checkpoint-dir", tmp_path / "ck", *TINY)
    assert r.exit_code == 0, r.output
    assert "epoch   3/3" in r.output and f"in {db_url}" in r.output
    (run_row,) = rows(db_url, "select * from runs")
    assert (run_row["model"], run_row["recipe"], run_row["status"], run_row["epochs_done"]) == ("resnet18", "naive", "completed", 3)
    epochs = rows(db_url, "select * from epochs order by epoch")
    assert [e["epoch"] for e in epochs] == [1, 2, 3]
    assert run_row["best_val_acc"] == max(e["val_acc"] for e in epochs)
    assert run_row["final_val_acc"] == epochs[-1]["val_acc"]
    assert rows(db_url, "select count(*) as n from evaluations")[0]["n"] == 1
    assert (tmp_path / "ck" / "last.pt").is_file()


def test_resume_from_checkpoint_continues_history(db_url, tmp_path):
    assert run("train", "--model", "resnet18", "--recipe", "naive", "--epochs", 2, "--db", db_url,
               "--checkpoint-dir", tmp_path / "ck", *TINY).exit_code == 0
    r = run("train", "--resume", tmp_path / "ck" / "last.pt", "--epochs", 3, "--db", db_url)
    assert r.exit_code == 0, r.output
    assert "resumed from" in r.output and "epoch   3/3" in r.output and "epoch   1/3" not in r.output
    assert "extending 2 -> 3 epochs: the lr schedule is stretched to 3 epochs from update " in r.output
    second = rows(db_url, "select max(id) as id from runs")[0]["id"]
    assert [e["epoch"] for e in rows(db_url, f"select epoch from epochs where run_id={second} order by epoch")] == [1, 2, 3]


def test_resume_with_fewer_epochs_than_done_exits_2_and_writes_nothing(db_url, tmp_path):
    assert run("train", "--model", "resnet18", "--recipe", "naive", "--epochs", 2, "--db", db_url,
               "--checkpoint-dir", tmp_path / "ck", *TINY).exit_code == 0
    before = (tmp_path / "ck" / "last.pt").stat().st_mtime_ns
    r = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "ck" / "last.pt"), "--epochs", "1", "--db", db_url])
    assert r.exit_code == 2, r.output
    assert "error: --epochs: got 1." in r.output and "already trained 2 epochs (of 2); pass --epochs 2 or more" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert rows(db_url, "select count(*) as n from runs")[0]["n"] == 1  # no second run row
    assert (tmp_path / "ck" / "last.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize("args,field,fix", [
    (["--model", "resnet5O"], "--model", "Did you mean 'resnet50'"),
    (["--model", "vit_tiny", "--recipe", "vitt"], "--recipe", "Did you mean 'vit'"),
    (["--model", "resnet18", "--set", "lr=-1"], "--set lr", "greater than 0"),
    (["--model", "resnet18", "--set", "nosuchkey=1"], "--set nosuchkey", "Valid:"),
    (["--model", "resnet18", "--set", "lr"], "--set", "KEY=VALUE"),
    (["--model", "resnet18", "--data", "imagefolder"], "data.root", "--data-root"),
    (["--model", "resnet18", "--data", "imagefolder", "--data-root", "/no/such/dir"], "data.root", "No such folder"),
    (["--model", "resnet18", "--epochs", "0"], "--epochs", "Use at least 1 epoch"),
    (["--model", "swin_tiny", "--image-size", "40"], "data.image_size", "divisible by 8"),
    (["--resume", "/no/such/last.pt"], "--resume", "No such checkpoint"),
    ([], "--model", "Name a model"),
])
def test_bad_input_exits_2_and_writes_nothing(args, field, fix, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "results.db"
    r = CliRunner().invoke(main, ["train", "--db", f"sqlite:///{db}", *args])
    assert r.exit_code == 2, r.output
    assert f"error: {field}" in r.output and fix in r.output
    assert len(r.output.strip().splitlines()) == 1  # one message, no traceback
    assert list(tmp_path.iterdir()) == []


def test_corrupt_resume_file_is_refused(tmp_path):
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"\x80\x02garbage")
    r = CliRunner().invoke(main, ["train", "--resume", str(bad), "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert r.exit_code == 2 and "Not a loadable harness checkpoint" in r.output
    assert not (tmp_path / "r.db").exists()


def test_foreign_database_is_refused(tmp_path):
    db = tmp_path / "other.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as c:
        c.execute(sa.text("create table runs (x int)"))
    engine.dispose()
    r = CliRunner().invoke(main, ["train", "--model", "resnet18", "--db", f"sqlite:///{db}"])
    assert r.exit_code == 2 and "not a harness database" in r.output


def test_models_lists_registry_with_size():
    r = run("models", "--image-size", "32")
    assert r.exit_code == 0
    for name in ("resnet50", "efficientnet_b3", "vit_base", "swin_tiny", "vit_tiny", "swin_nano"):
        assert name in r.output
    assert "CPU stand-in for vit_base" in r.output and "GFLOPs@32" in r.output


def test_recipes_side_by_side_and_show():
    r = run("recipes")
    assert r.exit_code == 0 and all(n in r.output for n in ("naive", "vit", "swin", "cnn", "effnet", "vit_ft"))
    r = run("recipes", "show", "vit")
    # The published values with their source, then the lr the default 12-epoch digits run at batch 64 uses.
    assert r.exit_code == 0 and "DeiT" in r.output and "lr at its own batch 128: 0.000125 (linear rule)" in r.output
    assert "# lr actually used: 6.25e-05 at batch 64; warmup 19 updates" in r.output  # 12 x 16 updates: 10% of 192
    r = run("recipes", "show", "cnn", "--model", "resnet18", "--batch-size", "128")
    assert "lr actually used: 0.002 at batch 128" in r.output  # LAMB 8e-3 @ 2048 by sqrt: 8e-3 x sqrt(1/16)
    assert CliRunner().invoke(main, ["recipes", "show", "vitt"]).exit_code == 2


def test_every_command_has_help():
    for name, cmd in main.commands.items():
        r = CliRunner().invoke(main, [name, "--help"])
        assert r.exit_code == 0 and (cmd.help or "")[:40] in r.output, name
