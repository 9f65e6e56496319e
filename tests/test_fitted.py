"""The before/after measures the recipes, not the harness: each recipe runs with its own
augmentation, lr rule and schedule fitted to the run, at one batch size across a grid, and the
table carries intervals. Every test asserts on the objects the training loop is built from."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from harness import tables as rep
from harness.benchmark import load_grid, resolve_grid
from harness.data import BatchAugment, DataSpec, load
from harness.models import build_model, get_model_entry
from harness.recipes import RECIPES, TUNABLE, Budget, fit_recipe, get_recipe
from harness.specs import resolve_run
from harness.train import build_training, fit

CPU = torch.device("cpu")
DIGITS16 = DataSpec(name="digits", image_size=16)


def default_runs():
    """The runs of the shipped default grid on a CPU (digits at 16 px, batch 64), at 12 epochs."""
    return resolve_grid(load_grid(None, epochs=12), cuda=False).runs


def run_of(runs, model, recipe_name):
    return next(r for r in runs if r.model == model and r.recipe.name == recipe_name)


# --- 1. augmentation is part of the recipe ---------------------------------------------------------

def test_naive_gets_no_crop_flip_or_augmentation():
    """The CNN settings (ViT/Swin failure write-up) had no augmentation: a naive batch is only normalised."""
    spec = run_of(default_runs(), "vit_tiny", "naive")
    ds = load(spec.data, CPU)
    aug = BatchAugment(ds, spec.recipe, device=CPU)
    assert (aug.crop, aug.hflip, aug.randaugment, aug.erase) == ("none", 0.0, None, None)
    x = ds.train.x[:16]
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), aug.normalize(x))


def test_recipe_augmentation_is_what_the_recipe_says():
    ds = load(DataSpec(name="synthetic", image_size=16, num_classes=4, train_size=64), CPU)
    vit = get_recipe("vit")  # published: RandomResizedCrop 0.08, flip 0.5, rand-m9-mstd0.5-inc1, erasing 0.25
    aug = BatchAugment(ds, vit, device=CPU)
    assert (aug.crop, aug.scale_min, aug.hflip) == ("rrc", 0.08, 0.5)
    assert aug.erase is not None and aug.erase.probability == 0.25
    pad = BatchAugment(ds, vit.model_copy(update={"crop": "pad", "crop_pad": 0.25, "crop_pad_mode": "constant",
                                                  "hflip": 0.0, "randaugment": None}), device=CPU)
    assert (pad.crop, pad.pad, pad.pad_mode) == ("pad", 4, "constant")
    # Digits: mirroring changes the class, so no recipe flips them.
    assert BatchAugment(load(DIGITS16, CPU), vit, device=CPU).hflip == 0.0


def test_random_resized_crop_keeps_shape_and_follows_the_generator():
    ds = load(DIGITS16, CPU)
    aug = BatchAugment(ds, get_recipe("vit").model_copy(update={"randaugment": None, "random_erasing": 0.0}), device=CPU)
    x = ds.train.x[:32]
    a, b = aug(x, torch.Generator().manual_seed(1)), aug(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, aug.normalize(x))  # something was cropped
    whole = BatchAugment(ds, get_recipe("vit").model_copy(update={"randaugment": None, "random_erasing": 0.0,
                                                                  "crop_scale": 1.0}), device=CPU)
    # A crop of the whole image is the image (roi_align at full size, aspect 1 is the only fit).
    assert torch.allclose(whole(x, torch.Generator().manual_seed(0)), whole.normalize(x), atol=1e-3)


# --- 2. RandAugment means timm's strength, per image ------------------------------------------------

def test_randaugment_strength_matches_timm_for_the_same_string():
    from timm.data.auto_augment import _LEVEL_DENOM, _RAND_INCREASING_TRANSFORMS, rand_augment_transform

    ds = load(DIGITS16, CPU)
    aug = BatchAugment(ds, get_recipe("vit"), device=CPU)
    ref = rand_augment_transform("rand-m9-mstd0.5-inc1", {"translate_const": int(16 * 0.45), "img_mean": (124, 116, 104)})
    assert [op.name for op in aug.randaugment.ops] == [op.name for op in ref.ops] == list(_RAND_INCREASING_TRANSFORMS)
    for mine, theirs in zip(aug.randaugment.ops, ref.ops):
        # magnitude 9 on timm's scale of 10 (torchvision's magnitude=9 would be 9 of 31)
        assert (mine.magnitude, mine.magnitude_std, mine.magnitude_max) == (9, 0.5, None) == \
               (theirs.magnitude, theirs.magnitude_std, theirs.magnitude_max)
    assert _LEVEL_DENOM == 10  # magnitude_max None = timm's scale of 10
    assert aug.randaugment.num_layers == 2


def test_randaugment_survives_its_strongest_posterize():
    """At level 10 timm's increasing posterize keeps 0 bits: a black image, not a crash (Pillow >= 12 refuses 0)."""
    ds = load(DIGITS16, CPU)
    aug = BatchAugment(ds, get_recipe("vit"), device=CPU)
    op = next(o for o in aug.randaugment.ops if o.name == "PosterizeIncreasing")
    from PIL import Image

    img = Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8))
    assert np.asarray(op.aug_fn(img, 0)).max() == 0
    assert np.asarray(op.aug_fn(img, 4)).max() == 192  # 200 keeps its top 4 bits


def test_randaugment_draws_per_image():
    """64 copies of one image come out as many different images: no op draw is shared by a chunk."""
    ds = load(DIGITS16, CPU)
    aug = BatchAugment(ds, get_recipe("vit").model_copy(update={"crop": "none", "random_erasing": 0.0}), device=CPU)
    torch.manual_seed(0)
    x = ds.train.x[:1].expand(64, -1, -1, -1).contiguous()
    out = aug(x, torch.Generator().manual_seed(0))
    distinct = {out[i].numpy().tobytes() for i in range(64)}
    assert len(distinct) > 20


# --- 3. each optimizer's own lr rule; 5. warmup as the source's share of the run ----------------------

def test_lr_after_warmup_and_warmup_length_for_a_12_epoch_run():
    spec = run_of(default_runs(), "vit_tiny", "vit")
    assert (spec.recipe.form, spec.recipe.batch_size, spec.epochs, spec.train_images) == ("fitted", 64, 12, 1079)
    ds = load(spec.data, CPU)
    t = build_training(spec, ds, CPU)
    assert t.steps_per_epoch == 16 and spec.updates() == 192
    # DeiT warms up 5 of 300 epochs (1.7% = 3.2 updates here), floored at min(2/(1-0.999), 10% of 192) = 19.2 -> 19 updates.
    assert t.scheduler.warmup_t == pytest.approx(19, abs=0.01)
    peak = 5e-4 * 64 / 512  # DeiT: linear in the batch
    lrs = {}
    for step in (0, 9, 19, 192):
        t.scheduler.step_update(num_updates=step)
        lrs[step] = max(g["lr"] for g in t.optimizer.param_groups)
    assert lrs[0] < lrs[9] < lrs[19] and lrs[19] == pytest.approx(peak, rel=1e-3)
    assert lrs[192] == pytest.approx(1e-5, rel=1e-2)  # cosine reaches the source's min_lr at the run's end


def test_lamb_lr_at_batch_128_follows_sqrt():
    spec = resolve_run(model="resnet18", recipe="cnn", data=DIGITS16, epochs=12, batch_size=128)
    assert spec.recipe.lr_rule == "sqrt"
    assert spec.recipe.scaled_lr() == pytest.approx(8e-3 * math.sqrt(128 / 2048))  # 2e-3, not the linear rule's 5e-4
    t = build_training(spec, load(spec.data, CPU), CPU)
    t.scheduler.step_update(num_updates=spec.updates() // 2 - 1)
    w = round(t.scheduler.warmup_t)
    t.scheduler.step_update(num_updates=w)
    # timm's cosine runs from update 0 (warmup_prefix off): at the warmup's end it is already cos(pi w / T) down
    # from the peak 2e-3 that the sqrt rule gives.
    cos = 0.5 * (1 + math.cos(math.pi * w / t.scheduler.t_initial))
    expected = spec.recipe.min_lr + (2e-3 - spec.recipe.min_lr) * cos
    assert max(g["lr"] for g in t.optimizer.param_groups) == pytest.approx(expected, rel=1e-3)


def test_step_schedule_keeps_the_sources_number_of_decays():
    fitted = fit_recipe(get_recipe("effnet"), Budget(epochs=12, train_images=1438, batch_size=64))
    # timm: x0.97 every 2.4 of 450 epochs = 187.5 decays; the same count over 12 epochs.
    assert fitted.decay_epochs == pytest.approx(2.4 * 12 / 450, rel=1e-3)


def test_fitted_strength_scales_with_the_run_and_published_stays_verbatim():
    vit = get_recipe("vit")
    short = fit_recipe(vit, Budget(epochs=12, train_images=1438, batch_size=64))
    s = 12 / 300
    assert short.mixup_alpha == pytest.approx(0.8 * s) and short.cutmix_alpha == pytest.approx(1.0 * s)
    assert short.drop_path_rate == pytest.approx(0.1 * s) and short.random_erasing == pytest.approx(0.25 * s)
    assert short.randaugment is None  # m9 x 0.04 rounds to 0: off
    assert short.crop_scale == pytest.approx(1 - s * 0.92, rel=1e-3)
    assert (short.label_smoothing, short.weight_decay, short.hflip) == (0.1, 0.05, 0.5)  # not scaled
    long = fit_recipe(vit, Budget(epochs=300, train_images=1_281_167, batch_size=1024))
    assert long.model_dump(exclude={"form", "fit_notes"}) == vit.model_copy(update={"batch_size": 1024}).model_dump(
        exclude={"form", "fit_notes"})  # the source's own budget: the published values
    published = resolve_run(model="vit_tiny", recipe="vit@published", data=DIGITS16, epochs=12, batch_size=64).recipe
    assert published.form == "published" and published.warmup_epochs == 5 and published.randaugment == vit.randaugment


def test_ema_window_is_the_sources_share_of_the_run():
    short = fit_recipe(get_recipe("effnet"), Budget(epochs=12, train_images=1438, batch_size=64))
    assert short.ema_decay is not None and 0.5 < short.ema_decay < 0.9  # window of ~3.5 of 264 updates
    long = fit_recipe(get_recipe("effnet"), Budget(epochs=450, train_images=1_281_167, batch_size=768))
    assert long.ema_decay == pytest.approx(0.9999)


def test_every_fitted_change_is_explained():
    fitted = fit_recipe(get_recipe("swin"), Budget(epochs=12, train_images=1438, batch_size=64))
    text = " ".join(fitted.fit_notes)
    assert "20 of 300 epochs" in text and "lr 0.0005 per 512 -> 6.25e-05 at batch 64 (linear rule)" in text
    assert get_recipe("swin").label() == "swin (published)" and fitted.label() == "swin (fitted)"
    naive = fit_recipe(get_recipe("naive"), Budget(epochs=12, train_images=1438, batch_size=32))
    assert naive.model_dump(exclude={"form", "fit_notes", "batch_size"}) == get_recipe("naive").model_dump(
        exclude={"form", "fit_notes", "batch_size"}) and naive.label() == "naive"


# --- 4. one batch size across a grid ---------------------------------------------------------------

def test_a_grid_compares_recipes_at_one_batch_size():
    runs = default_runs()
    assert {r.recipe.batch_size for r in runs} == {64}
    assert {r.updates() for r in runs} == {192}
    assert {r.recipe.form for r in runs if r.recipe.name != "naive"} == {"fitted"}


def test_published_and_fitted_side_by_side():
    spec = load_grid(None, models="vit_base", recipes="naive,published,fitted", seeds=1)
    runs = resolve_grid(spec, cuda=False).runs
    assert [r.recipe.label() for r in runs] == ["naive", "vit (published)", "vit (fitted)"]
    with pytest.raises(Exception, match="listed twice"):
        load_grid(None, models="vit_base", recipes="naive,tuned,fitted")  # the older word and the new one: one recipe


def test_tuned_is_the_older_word_for_fitted():
    """Grids and files written before the rename still run the same recipe; tables say 'fitted'."""
    old, new = (resolve_grid(load_grid(None, models="vit_base", recipes=r, seeds=1), cuda=False).runs for r in ("tuned", "fitted"))
    assert [r.recipe for r in old] == [r.recipe for r in new]
    assert [r.recipe.label() for r in old] == ["vit (fitted)"]


# --- 7. EfficientNet's head init and image floor ---------------------------------------------------

def test_efficientnet_head_starts_at_imagenet_scale():
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", num_classes=10, image_size=16)
    w = model.get_classifier().weight
    assert w.abs().max() <= 1 / math.sqrt(1000) + 1e-6  # timm's TF init would give +-1/sqrt(10)
    ds = load(DIGITS16, CPU)
    model.train()
    loss = torch.nn.functional.cross_entropy(model(BatchAugment(ds, device=CPU).normalize(ds.train.x[:64])), ds.train.y[:64])
    assert loss.item() < 3.0  # about ln 10 = 2.3 at the start, as for any sensibly initialised classifier


def test_cnns_below_their_floor_are_told_so():
    assert "below its family's floor of 32 px" in get_model_entry("efficientnet_b0").size_warning(16)
    assert get_model_entry("resnet18").size_warning(32) is None
    assert get_model_entry("vit_tiny").size_warning(16) is None


# --- 8. metrics that measure what they say ---------------------------------------------------------

def test_train_accuracy_is_measured_clean_and_both_weights_are_evaluated(tiny_spec, tmp_path):
    """Under mixup the batch accuracy is against unmixed labels; train_acc is measured clean: the weights
    evaluated (EMA here) in eval mode, without augmentation or mixing, on a fixed slice of the training set
    (its first len(val) images). Checked by measuring exactly that, independently, with each epoch's saved
    weights: the reported train_acc must be that number."""
    spec = tiny_spec(epochs=2, overrides={"batch_size": 16, "mixup_alpha": 0.8, "cutmix_alpha": 1.0, "ema_decay": 0.9,
                                          "randaugment": "rand-m9-mstd0.5-inc1", "crop": "rrc", "hflip": 0.5},
                     checkpoint_dir=tmp_path / "ck", checkpoint_every=1)
    reports = []
    fit(spec, reports.append)
    ds = load(spec.data, CPU)  # the same data (the synthetic set is a function of its spec)
    probe_x, probe_y = ds.train.x[: len(ds.val)], ds.train.y[: len(ds.val)]
    assert len(probe_y) == len(ds.val) == 21 and len(ds.train) == 64  # a slice of the training set, not all of it
    model = build_model(spec.model, num_classes=ds.num_classes, image_size=ds.image_size)
    for r in reports:
        m = r.metrics
        assert {"train_acc", "train_batch_acc", "val_acc", "val_acc_raw"} <= set(m)
        ckpt = torch.load(tmp_path / "ck" / f"epoch_{r.epoch}.pt", map_location="cpu", weights_only=True)
        ema = {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}  # the weights measure() evaluated
        model.load_state_dict(ema)
        model.eval()  # BatchNorm on running statistics, drop path off
        with torch.no_grad():
            x = (probe_x.float() - BatchAugment(ds, device=CPU).mean) / BatchAugment(ds, device=CPU).std  # normalised only
            clean = float((model(x).argmax(1) == probe_y).float().mean())
        assert m["train_acc"] == pytest.approx(clean, abs=1e-6), (r.epoch, m["train_acc"], clean)  # float32 mean of 21
        assert 0 <= m["val_acc_raw"] <= 1
    assert any(r.metrics["val_acc"] != r.metrics["val_acc_raw"] for r in reports)  # the EMA and raw weights differ


# --- 9. statistics -----------------------------------------------------------------------------------

def test_wilson_and_newcombe_match_published_values():
    # Newcombe (1998), table I example: 81/263 -> Wilson (0.2553, 0.3662).
    lo, hi = rep.wilson(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    # Newcombe (1998) table II example (method 10): 56/70 vs 48/80 -> difference 0.2, interval (0.0524, 0.3339).
    lo, hi = rep.newcombe(48 / 80, 80, 56 / 70, 70)
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)


def test_verdict():
    assert rep.verdict(0.01, 0.2) == "better" and rep.verdict(-0.2, -0.01) == "worse"
    assert rep.verdict(-0.1, 0.1) == "no detectable difference" and rep.verdict(float("nan"), 0.1) == ""


def test_table_interval_and_verdict_come_from_the_rows(db_url):
    """One seed a side, scored on the same 359 test images: the interval is Newcombe's paired one over those
    images, from which images each run got right; the cells are each run's Wilson interval on test."""
    import numpy as np

    from harness.evaluate import pack_correct
    from harness.store import Store

    store = Store(db_url)
    exp = store.create_experiment(kind="benchmark", name="g")
    params = {"data": {"name": "digits"}, "epochs": 2, "train_images": 1438, "recipe": {"batch_size": 64}}
    finals = {"naive": 0.30, "vit (fitted)": 0.80}
    n = 359
    # naive right on images 0..99 (100 = 27.9%), vit on 50..339 (290 = 80.8%): both right on 50 of them.
    right = {"naive": np.arange(n) < 100, "vit (fitted)": (np.arange(n) >= 50) & (np.arange(n) < 340)}
    for recipe, final in finals.items():
        run = store.create_run(exp, model="vit_tiny", recipe=recipe, params=params, seed=0, stands_for="vit_base")
        store.log_epoch(run, 1, {"val_acc": final - 0.1, "train_acc": 0.5})
        store.log_epoch(run, 2, {"val_acc": final, "train_acc": 0.5})
        confusion = [[0] * 10 for _ in range(10)]
        confusion[0][0] = n  # only the total matters for the interval
        store.save_evaluation(run, {"epoch": 2, "class_names": [str(i) for i in range(10)], "per_class_acc": [0.0] * 10,
                                    "confusion": confusion, "samples": []})
        store.save_test(run, {"test_acc": float(right[recipe].mean()), "test_loss": 1.0, "n_test": n,
                              "test_correct": pack_correct(right[recipe])})
        store.finish_run(run, status="completed")
    row = rep.before_after(store, exp).iloc[0]
    assert (row["batch"], row["updates"], row["n_images"], row["split"]) == (64, 44, 359, "test")
    lo, hi = rep.wilson(100, 359)
    assert (row["before_acc_lo"], row["before_acc_hi"]) == (pytest.approx(100 * lo), pytest.approx(100 * hi))
    dlo, dhi = rep.paired_image_interval(right["naive"], right["vit (fitted)"])
    assert (row["delta_lo"], row["delta_hi"]) == (pytest.approx(100 * dlo), pytest.approx(100 * dhi))
    assert row["delta"] == pytest.approx(100 * (290 - 100) / 359)
    assert row["verdict"] == "better (one seed)" and "359 test images, one seed" in row["interval"]
    shown = rep.format_before_after(rep.before_after(store, exp)).iloc[0]
    assert shown["verdict"] == "better (one seed)" and shown["batch, updates"] == "64, 44"
    assert shown["test acc %"].startswith("27.9 [") and "→ 80.8 [" in shown["test acc %"]
    store.close()


def test_ending_at_chance_is_flagged_even_after_a_good_epoch(db_url):
    from harness.store import Store

    store = Store(db_url)
    exp = store.create_experiment(kind="benchmark", name="g")
    run = store.create_run(exp, model="vit_tiny", recipe="naive", params={"data": {"name": "digits"}}, seed=0)
    for epoch, acc in enumerate((0.5, 0.6, 0.1), start=1):
        store.log_epoch(run, epoch, {"val_acc": acc})
    store.save_evaluation(run, {"epoch": 2, "class_names": [str(i) for i in range(10)], "per_class_acc": [0.0] * 10,
                                "confusion": [[36 if i == j else 0 for j in range(10)] for i in range(10)], "samples": []})
    # 40 of 359 test images right (11.1%): not above chance (10%) by the one-sided binomial test at 1%.
    store.save_test(run, {"test_acc": 40 / 359, "test_loss": 2.3, "n_test": 359, "test_correct": None})
    store.finish_run(run, status="completed")
    row = rep.before_after(store, exp).iloc[0]
    assert "naive: 1/1 ended at chance" in row["flags"] and "never beat chance" not in row["flags"]
    store.close()


def test_ingredient_fields_are_known():
    """Every field the fitting touches is a tunable recipe field (a typo here would be silently ignored)."""
    for key in ("warmup_epochs", "decay_epochs", "ema_decay", "mixup_alpha", "cutmix_alpha", "random_erasing",
                "drop_path_rate", "drop_rate", "randaugment", "crop_scale", "crop_pad", "batch_size"):
        assert key in TUNABLE
    assert set(RECIPES) >= {"naive", "cnn", "effnet", "vit", "swin"}
