"""The training loop: determinism, resume, checkpoints, divergence."""

from __future__ import annotations

import os

import pytest
import torch

from harness.errors import UserError
from harness.store import EPOCH_METRICS
from harness.train import fit, load_checkpoint, save_atomic


def collect(spec, **kw):
    reports = []
    result = fit(spec, reports.append, **kw)
    return result, reports


def test_same_seed_same_numbers(tiny_spec):
    """Two runs with the same seed on the same device produce identical metrics."""
    a, _ = collect(tiny_spec(recipe="vit", model="vit_tiny", overrides={"batch_size": 16}))
    b, _ = collect(tiny_spec(recipe="vit", model="vit_tiny", overrides={"batch_size": 16}))
    strip = lambda h: [{k: v for k, v in m.items() if k not in ("epoch_s", "images_per_s")} for m in h]  # noqa: E731
    assert strip(a.history) == strip(b.history)
    c, _ = collect(tiny_spec(recipe="vit", model="vit_tiny", seed=1, overrides={"batch_size": 16}))
    assert strip(c.history) != strip(a.history)


def test_report_every_epoch_with_all_metrics(tiny_spec):
    result, reports = collect(tiny_spec(epochs=3))
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert [r.status for r in reports] == ["running", "running", "completed"]
    for r in reports:
        assert set(r.metrics) == set(EPOCH_METRICS)
        assert all(v == v for v in r.metrics.values())  # no NaN
    assert reports[-1].evaluation is not None and reports[0].evaluation is None
    ev = reports[-1].evaluation
    assert len(ev["per_class_acc"]) == 4 and len(ev["confusion"]) == 4
    assert sum(map(sum, ev["confusion"])) == 21  # every validation image counted once (a fifth of 106)
    # The test split, scored once at the end on the final weights: the last report and the result carry it.
    assert [r.test is not None for r in reports] == [False, False, True] and result.test == reports[-1].test
    t = reports[-1].test
    assert t["n_test"] == 21 and 0 <= t["test_acc"] <= 1 and t["test_loss"] > 0
    from harness.store import unpack_correct

    assert unpack_correct(t["test_correct"], 21).mean() == t["test_acc"]  # the bits are the accuracy, image by image
    assert result.status == "completed" and result.epochs_done == 3


def test_resume_equals_uninterrupted(tiny_spec, tmp_path, fault_plugin):
    """A run that crashes in epoch 3 and is resumed from last.pt ends with the same numbers as one
    that never stopped (the crash comes from a plugin model: vit_tiny raising once at step 9)."""
    fault_plugin({"*": {"raise_at_step": 9, "once_file": str(tmp_path / "raised")}})  # 4 steps an epoch
    full, _ = collect(tiny_spec(recipe="vit", model="vit_tiny", epochs=4, overrides={"batch_size": 16},
                                checkpoint_dir=tmp_path / "a"))
    crashing = tiny_spec(recipe="vit", model="faulty_vit_tiny", epochs=4, overrides={"batch_size": 16},
                         checkpoint_dir=tmp_path / "b")
    with pytest.raises(RuntimeError, match="injected failure at step 9"):
        fit(crashing)
    ckpt = load_checkpoint(tmp_path / "b" / "last.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    resumed, reports = collect(crashing, resume=tmp_path / "b" / "last.pt")
    assert [r.epoch for r in reports] == [3, 4]
    keys = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "grad_norm")
    assert [[m[k] for k in keys] for m in resumed.history] == [[m[k] for k in keys] for m in full.history]


def test_resume_with_more_epochs_stretches_the_lr_schedule(tiny_spec, tmp_path):
    """Resuming a finished 2-epoch cosine run with epochs=5 continues as if it had been planned for 5
    epochs: the saved scheduler (which holds the old length) is not loaded, so the new epochs do not
    all run at min_lr; every new epoch's lr is the fresh 5-epoch schedule's at that update."""
    short = tiny_spec(recipe="vit", epochs=2, overrides={"batch_size": 16, "lr": 0.01}, checkpoint_dir=tmp_path / "a")
    first, _ = collect(short)
    min_lr = short.recipe.min_lr
    assert first.history[-1]["lr"] == pytest.approx(min_lr)  # the 2-epoch schedule has ended
    longer = short.model_copy(update={"epochs": 5, "checkpoint_dir": tmp_path / "b"})
    said: list[str] = []
    resumed, reports = collect(longer, resume=tmp_path / "a" / "last.pt", log=said.append)
    assert [r.epoch for r in reports] == [3, 4, 5] and resumed.status == "completed"
    fresh, _ = collect(short.model_copy(update={"epochs": 5, "checkpoint_dir": None}))  # same recipe, planned for 5
    assert [m["lr"] for m in resumed.history[2:]] == pytest.approx([m["lr"] for m in fresh.history[2:]], rel=1e-9)
    assert resumed.history[2]["lr"] > 10 * min_lr
    line = next(s for s in said if s.startswith("extending"))
    assert "extending 2 -> 5 epochs: the lr schedule is stretched to 5 epochs from update 8" in line
    assert f"(lr {min_lr:.2e} -> " in line
    assert load_checkpoint(tmp_path / "b" / "last.pt")["config"]["epochs"] == 5  # a later resume keeps the new length


def test_resume_with_fewer_epochs_than_done_is_refused(tiny_spec, tmp_path):
    spec = tiny_spec(epochs=2, checkpoint_dir=tmp_path / "a")
    fit(spec)
    with pytest.raises(UserError, match=r"--epochs: got 1\. .*already trained 2 epochs.*--epochs 2 or more"):
        fit(spec.model_copy(update={"epochs": 1}), resume=tmp_path / "a" / "last.pt")


def test_checkpoint_contents(tiny_spec, tmp_path):
    fit(tiny_spec(epochs=2, checkpoint_dir=tmp_path, checkpoint_every=1))
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["best.pt", "epoch_1.pt", "epoch_2.pt", "last.pt"]
    ckpt = load_checkpoint(tmp_path / "last.pt")
    for key in ("epoch", "global_step", "model", "optimizer", "scheduler", "scaler", "best_val_acc", "config", "history"):
        assert key in ckpt
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 2 * (64 // 16)
    assert ckpt["config"]["model"] == "resnet18"
    # best.pt: the best epoch's weights and what they scored, no optimizer (a resume reads last.pt's)
    best = load_checkpoint(tmp_path / "best.pt")
    assert set(best) == {"epoch", "model", "best_val_acc", "config"}


def test_a_finished_runs_checkpoint_keeps_its_weights_not_the_optimizer(tiny_spec, tmp_path):
    """What a completed (or ASHA-stopped) Ray trial keeps: the weights, evaluated and exported from; not
    AdamW's moments, twice the weights, which only a resume reads. Resuming from it is refused with the fix."""
    from harness.train import keep_weights_only

    spec = tiny_spec(recipe="vit", epochs=1, checkpoint_dir=tmp_path)
    fit(spec)
    full = load_checkpoint(tmp_path / "last.pt")
    size = (tmp_path / "last.pt").stat().st_size
    keep_weights_only(tmp_path / "last.pt")
    slim = load_checkpoint(tmp_path / "last.pt")
    assert slim["optimizer"] is None and slim["scheduler"] is None
    assert all(torch.equal(slim["model"][k], v) for k, v in full["model"].items())
    assert (tmp_path / "last.pt").stat().st_size < size / 2  # resnet18 + AdamW's two moments -> the weights
    with pytest.raises(UserError, match=r"finished trial's weights only"):
        fit(spec.model_copy(update={"epochs": 2, "checkpoint_dir": tmp_path / "b"}), resume=tmp_path / "last.pt")


def test_save_atomic_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(2)}, "epoch": 1}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_atomic({"model": {"w": torch.zeros(2)}, "epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupt_or_tampered_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(UserError, match="Not a loadable harness checkpoint"):
        load_checkpoint(bad)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    tampered = tmp_path / "tampered.pt"
    torch.save({"model": Evil(), "epoch": 1}, tampered)
    with pytest.raises(UserError, match="weights-only loading refused"):
        load_checkpoint(tampered)


def test_nan_loss_stops_run_as_diverged(tiny_spec, fault_plugin):
    fault_plugin({"*": {"nan_at_step": 5}})
    result, reports = collect(tiny_spec(model="faulty_resnet_test", epochs=4))
    # 4 steps per epoch: step 5 is in epoch 2, which is the last one reported.
    assert result.status == "diverged"
    assert [r.epoch for r in reports] == [1, 2]
    assert reports[-1].status == "diverged"
    assert reports[-1].metrics["train_loss"] != reports[-1].metrics["train_loss"]  # NaN kept as the signal


def test_time_limit_stops_with_checkpoint(tiny_spec, tmp_path):
    result = fit(tiny_spec(epochs=5, max_hours=1e-9, checkpoint_dir=tmp_path))
    assert result.status == "time_limit" and result.epochs_done == 1
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 1


def test_layer_decay_reaches_the_optimizer_through_timm_scheduler(tiny_spec):
    """Layer decay only works through timm's scheduler: the param groups must end with different lrs."""
    from harness.models import build_model
    from harness.recipes import RECIPES, build_optimizer, build_scheduler

    model = build_model("vit_tiny", num_classes=4, image_size=16)
    opt = build_optimizer(model, RECIPES["vit_ft"])
    sched = build_scheduler(opt, RECIPES["vit_ft"], epochs=10, steps_per_epoch=10)
    sched.step_update(num_updates=60)
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert len(lrs) > 5
    assert lrs[0] / lrs[-1] == pytest.approx(0.65 ** 13, rel=1e-3)  # 12 blocks + embeddings, head at full lr


def test_pretrained_file_loads_local_weights(tmp_path):
    from harness.models import build_model

    src = build_model("resnet18", num_classes=4, image_size=32)
    path = tmp_path / "weights.pth"
    torch.save(src.state_dict(), path)
    loaded = build_model("resnet18", num_classes=4, image_size=32, pretrained_file=path)
    assert torch.equal(loaded.conv1.weight, src.conv1.weight)
    assert torch.equal(loaded.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_pretrained_offline_is_a_clear_error(monkeypatch):
    from harness.models import build_model

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="--pretrained-file"):
        build_model("resnet18", num_classes=4, image_size=32, pretrained=True)
