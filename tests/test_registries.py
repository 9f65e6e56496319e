"""Registries: every model, dataset and recipe builds and works; recipe values match their sources."""

from __future__ import annotations

import pytest
import torch

from harness.data import DataSpec, load
from harness.errors import UserError
from harness.models import ALL, CPU_VARIANT, MODELS, build_model, get_model_entry
from harness.recipes import FAMILY_RECIPES, RECIPES, build_loss, build_mixup, build_optimizer, get_recipe


@pytest.mark.parametrize("name", list(MODELS))
def test_every_model_builds_and_takes_a_step(name):
    size = 32
    model = build_model(name, num_classes=5, image_size=size)
    opt = build_optimizer(model, get_recipe(FAMILY_RECIPES[MODELS[name].family]))
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 4])
    out = model(x)
    assert out.shape == (2, 5)
    torch.nn.functional.cross_entropy(out, y).backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name,size,expected", [
    ("vit_base", 224, {"patch_size": 16}), ("vit_base", 32, {"patch_size": 4}), ("vit_tiny", 32, {"patch_size": 8}),
    ("swin_tiny", 224, {"patch_size": 4, "window_size": 7}), ("swin_tiny", 32, {"patch_size": 2, "window_size": 4}),
    ("swin_tiny", 64, {"patch_size": 2, "window_size": 4}),
])
def test_transformers_adapt_to_image_size(name, size, expected):
    kwargs = get_model_entry(name).size_kwargs(size)
    assert {k: kwargs[k] for k in expected} == expected


def test_image_size_a_swin_cannot_take_is_refused():
    with pytest.raises(UserError, match="divisible by 8"):
        get_model_entry("swin_tiny").size_kwargs(40)


def test_cpu_variants_are_same_family_and_honestly_named():
    assert set(CPU_VARIANT) == set(ALL)
    for full, small in CPU_VARIANT.items():
        assert MODELS[full].family == MODELS[small].family
        assert small != full


def test_recipe_values_follow_their_sources():
    naive, vit, swin, cnn, effnet = (RECIPES[n] for n in ("naive", "vit", "swin", "cnn", "effnet"))
    # the CNN settings of the ViT/Swin failure write-up
    assert (naive.optimizer, naive.lr, naive.lr_rule, naive.warmup_epochs, naive.schedule) == ("adam", 1e-3, "none", 0, "step")
    assert naive.weight_decay == naive.grad_clip == naive.label_smoothing == naive.mixup_alpha == 0
    # DeiT-B
    assert (vit.optimizer, vit.lr, vit.lr_base_batch, vit.weight_decay, vit.warmup_epochs) == ("adamw", 5e-4, 512, 0.05, 5)
    assert (vit.label_smoothing, vit.mixup_alpha, vit.cutmix_alpha, vit.drop_path_rate, vit.min_lr) == (0.1, 0.8, 1.0, 0.1, 1e-5)
    # Swin-T
    assert (swin.grad_clip, swin.drop_path_rate, swin.weight_decay, swin.no_decay_norm_bias) == (5.0, 0.2, 0.05, True)
    # RSB A3 and timm's EfficientNet-B0
    assert (cnn.optimizer, cnn.lr, cnn.lr_base_batch, cnn.weight_decay, cnn.loss) == ("lamb", 8e-3, 2048, 0.02, "bce")
    assert (effnet.optimizer, effnet.lr, effnet.lr_base_batch, effnet.decay_rate, effnet.decay_epochs) == \
        ("rmsproptf", 0.048, 768, 0.97, 2.4)
    # fine-tuning variants carry layer decay and expect pretrained weights
    assert RECIPES["vit_ft"].layer_decay == 0.65 and RECIPES["swin_ft"].layer_decay == 0.7
    assert all(RECIPES[f"{n}_ft"].pretrained for n in FAMILY_RECIPES.values())


def test_lr_scales_linearly_with_batch_size():
    vit = RECIPES["vit"]
    assert vit.scaled_lr() == pytest.approx(5e-4 * 128 / 512)
    assert vit.model_copy(update={"batch_size": 1024}).scaled_lr() == pytest.approx(1e-3)
    assert RECIPES["naive"].model_copy(update={"batch_size": 1024}).scaled_lr() == 1e-3  # flat by design


def test_no_weight_decay_on_norms_and_biases():
    model = build_model("vit_tiny", num_classes=4, image_size=16)
    opt = build_optimizer(model, RECIPES["vit"])
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (p.ndim > 1 and "pos_embed" not in name and "cls_token" not in name), name


def test_mixup_recipes_use_soft_target_loss():
    from timm.loss import SoftTargetCrossEntropy

    assert isinstance(build_loss(RECIPES["vit"]), SoftTargetCrossEntropy)
    assert build_mixup(RECIPES["naive"], 10) is None
    assert isinstance(build_loss(RECIPES["naive"]), torch.nn.CrossEntropyLoss)


# The published mixing of each recipe (DESIGN.md's table): mixup alpha, cutmix alpha, label smoothing
# folded into the soft targets. DeiT/Swin/MAE: --mixup 0.8 --cutmix 1.0 --smoothing 0.1, mixup_prob 1.0,
# switch_prob 0.5, mode 'batch' (deit main.py's defaults); RSB A3: mixup 0.1 / cutmix 1.0 with BCE and no
# smoothing. The others mix nothing.
MIXING = {"vit": (0.8, 1.0, 0.1), "swin": (0.8, 1.0, 0.1), "vit_ft": (0.8, 1.0, 0.1), "swin_ft": (0.8, 1.0, 0.1),
          "cnn": (0.1, 1.0, 0.0)}


@pytest.mark.parametrize("name", list(RECIPES))
def test_mixup_is_configured_as_the_recipe_says(name):
    """The timm Mixup the training loop gets carries the recipe's alphas, probability, mode and label
    smoothing, and those are the published values."""
    recipe = RECIPES[name]
    mixup = build_mixup(recipe, 10)
    if name not in MIXING:
        assert mixup is None and not recipe.uses_mixup()
        return
    mix_a, cut_a, smoothing = MIXING[name]
    assert (recipe.mixup_alpha, recipe.cutmix_alpha, recipe.label_smoothing, recipe.mixup_prob) == (mix_a, cut_a, smoothing, 1.0)
    assert (mixup.mixup_alpha, mixup.cutmix_alpha, mixup.label_smoothing) == (mix_a, cut_a, smoothing)
    assert (mixup.mix_prob, mixup.switch_prob, mixup.mode, mixup.num_classes) == (1.0, 0.5, "batch", 10)
    assert mixup.mixup_enabled and mixup.cutmix_minmax is None and mixup.correct_lam
    # and what it does: soft targets that sum to 1, smoothed by exactly the recipe's amount
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 10
    _, target = mixup(x.clone(), y)
    assert target.shape == (8, 10) and torch.allclose(target.sum(1), torch.ones(8))
    assert target.min() == pytest.approx(smoothing / 10, abs=1e-6)  # the off value of timm's smoothed one-hot
    # the loss takes those soft targets (BCE for RSB, soft-target cross-entropy otherwise), smoothing not twice
    from timm.loss import BinaryCrossEntropy, SoftTargetCrossEntropy

    loss = build_loss(recipe)
    if recipe.loss == "bce":
        assert isinstance(loss, BinaryCrossEntropy) and loss.smoothing == 0.0
    else:
        assert isinstance(loss, SoftTargetCrossEntropy)


def test_digits_is_the_real_scikit_learn_set_with_a_fixed_split():
    a = load(DataSpec(image_size=16), torch.device("cpu"))
    b = load(DataSpec(image_size=16), torch.device("cpu"))
    assert (len(a.train), len(a.val), len(a.test)) == (1079, 359, 359) and a.num_classes == 10
    assert torch.equal(a.val.y, b.val.y) and torch.equal(a.test.y, b.test.y)
    assert a.train.x.shape[1:] == (3, 16, 16) and a.train.x.dtype == torch.uint8
    assert not a.hflip  # a mirrored digit is another symbol


def test_synthetic_any_size_and_classes():
    ds = load(DataSpec(name="synthetic", image_size=24, num_classes=7, train_size=70), torch.device("cpu"))
    assert ds.num_classes == 7 and len(ds.train) == 70 and ds.train.x.shape[1:] == (3, 24, 24)
    assert (len(ds.val), len(ds.test)) == (23, 23)  # a fifth each of the 116 generated


def _write_images(folder, classes, n, size=20):
    from PIL import Image

    for c, cls in enumerate(classes):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (size, size + 4), (40 * c, 10 * i, 90)).save(folder / cls / f"{i}.png")


def test_imagefolder_with_and_without_split(tmp_path):
    _write_images(tmp_path / "flat", ["cat", "dog"], 5)
    ds = load(DataSpec(name="imagefolder", root=tmp_path / "flat", image_size=16, workers=0), torch.device("cpu"))
    assert ds.class_names == ["cat", "dog"] and (len(ds.train), len(ds.val), len(ds.test)) == (6, 2, 2)
    x, y = next(ds.train.batches(4, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.uint8
    _write_images(tmp_path / "split" / "train", ["a", "b", "c"], 3)
    _write_images(tmp_path / "split" / "val", ["a", "b", "c"], 2)
    ds = load(DataSpec(name="imagefolder", root=tmp_path / "split", image_size=16, workers=0), torch.device("cpu"))
    # train/ and val/ only: val is the user's, the test split a stratified fifth of train/ (2 of 9).
    assert (len(ds.train), len(ds.val), len(ds.test), ds.num_classes) == (7, 6, 2, 3)
    _write_images(tmp_path / "split" / "test", ["a", "b", "c"], 1)
    ds = load(DataSpec(name="imagefolder", root=tmp_path / "split", image_size=16, workers=0), torch.device("cpu"))
    assert (len(ds.train), len(ds.val), len(ds.test)) == (9, 6, 3)  # all three given: used as they are


def test_tinyimagenet_layout(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    for wnid in ("n01", "n02"):
        _write_images(root / "train" / wnid, ["images"], 3)
    _write_images(root / "val", ["images"], 4)
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{i}.png\t{'n01' if i % 2 else 'n02'}\t0\t0\t1\t1\n" for i in range(4)))
    ds = load(DataSpec(name="tinyimagenet", root=tmp_path, image_size=16, workers=0), torch.device("cpu"))
    # The labelled val/ is the test split; val is a fifth of train/ (1 of 6).
    assert ds.class_names == ["n01", "n02"] and (len(ds.train), len(ds.val), len(ds.test)) == (5, 1, 4)


@pytest.mark.parametrize("spec,match", [
    (DataSpec(name="imagefolder"), "needs the folder"),
    (DataSpec(name="cifar10", root="/nonexistent/cifar"), "No such folder"),
    (DataSpec(name="mnist"), "Unknown name"),
])
def test_bad_data_specs(spec, match):
    with pytest.raises(UserError, match=match):
        load(spec, torch.device("cpu"))


def test_cifar_missing_files_says_how_to_fix(tmp_path):
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load(DataSpec(name="cifar10", root=tmp_path), torch.device("cpu"))


def test_common_optimizers_are_timm_optimizers():
    """Recipes accept these names without importing timm; each must be one timm builds."""
    import timm.optim

    from harness.recipes import COMMON_OPTIMIZERS

    assert COMMON_OPTIMIZERS <= set(timm.optim.list_optimizers())


@pytest.mark.parametrize("text", ["rand-m9-mstd0.5-inc1", "rand-m6-mstd0.5-inc1", "rand-m9-mstd0.5", "rand-n3-m7",
                                  "rand-m9-p0.5", "rand-m9-mmax10", "rand", "rand-m9.5", "rand-x3", "rand-m9-inc2",
                                  "randm9", "rand-m", "augmix-m9"])
def test_randaugment_format_agrees_with_timm(text):
    """The harness's format check (no timm import) accepts exactly what timm's parser builds."""
    from timm.data.auto_augment import rand_augment_transform

    from harness.recipes import RANDAUGMENT_FORMAT

    try:
        rand_augment_transform(text, {"translate_const": 10, "img_mean": (128, 128, 128)})
        timm_ok = True
    except (AssertionError, ValueError, KeyError):
        timm_ok = False
    ours = RANDAUGMENT_FORMAT.fullmatch(text) is not None
    if text == "rand-m":  # timm skips an empty section; the harness asks for the number
        assert not ours
        return
    assert ours == timm_ok, (text, ours, timm_ok)


def test_listings_build_nothing_and_import_no_torch_or_pandas():
    """`harness models` and `harness recipes` read shipped counts and lay tables out by hand: instant listings."""
    import subprocess
    import sys

    code = ("import sys; from harness.cli import main\n"
            "for args in (['models'], ['recipes']):\n"
            "    try: main(args)\n"
            "    except SystemExit as e: assert not e.code, e.code\n"
            "heavy = [m for m in ('torch', 'timm', 'pandas') if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "vit_base" in done.stdout and "85.2M" in done.stdout  # the shipped count, not a build
    assert "lr_base_batch" in done.stdout and "swin_ft" in done.stdout  # every recipe's fields
