"""RandAugment on the device (harness/augment.py, issue 23 item 2) against timm's PIL RandAugment.

What is compared, and the tolerance:
- each op's argument from a magnitude: exactly timm's `LEVEL_TO_ARG` (same float64 arithmetic);
- each op's pixels at fixed arguments against timm's PIL op on the same images: equal, bit for bit.
  No tolerance is needed because the device ops compute what Pillow computes in its own arithmetic:
  sample positions and bilinear/bicubic interpolation in double with its formulas and truncation, its
  integer RGB -> L, its float32 blend, autocontrast's double LUT arithmetic, SMOOTH in integers
  (round(sum / 13) never ties). A 1-level difference would grow through a following op (a pixel either
  side of Solarize's threshold comes out up to 255 levels apart), so "close" would not stay close;
- a whole RandAugment with timm's own draws (recorded from timm's RandAugment.__call__ per image, two or
  three ops in a row): equal, bit for bit;
- the draws' distribution (which op per layer, applied or not, its argument, the filter) against timm's
  over DRAW_IMAGES images, by a chi-square test of the counts (fixed seeds: deterministic).
The CPU path of BatchAugment stays timm's PIL one (its numbers unchanged); the device path is taken on
CUDA batches, or when forced (as here, on CPU tensors).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from harness.augment import GEOMETRIC, SUPPORTED, DeviceRandAugment, Draws, apply_op, level_to_arg
from harness.data import BatchAugment, DataSpec, load
from harness.recipes import get_recipe

CPU = torch.device("cpu")
FILL = (124, 116, 104)  # harness's fill for ImageNet-mean data (BatchAugment's img_mean)
DRAW_IMAGES = 3000  # images per distribution test: each op's count ~ 400 per layer, sd ~ 20
CHI2_P_MIN = 1e-3  # reject "same distribution" only below this p-value (deterministic seeds)


def _images(n: int = 12, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth colour fields plus noise: edges, flat regions and a full histogram, like photos."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bilinear")
    return (0.7 * base + 0.3 * torch.rand(n, 3, size, size, generator=g)).mul(255).round().to(torch.uint8)


def _pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def _tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def _timm_args(name: str, level: float, negate: bool, hparams: dict) -> tuple:
    from timm.data import auto_augment as aa

    fn = aa.LEVEL_TO_ARG[name]
    if fn is None:
        return ()
    orig = aa._randomly_negate
    aa._randomly_negate = (lambda v: -v) if negate else (lambda v: v)
    try:
        return fn(level, hparams)
    finally:
        aa._randomly_negate = orig


HPARAMS = {"translate_const": 14, "img_mean": FILL}


# --- the argument of each op: timm's level functions --------------------------------------------

@pytest.mark.parametrize("name", SUPPORTED)
def test_level_to_arg_is_timms(name):
    levels = torch.arange(0, 10.01, 0.125, dtype=torch.float64)
    for negate in (False, True):
        mine = level_to_arg(name, levels, torch.full_like(levels, negate, dtype=torch.bool), HPARAMS)
        theirs = [(_timm_args(name, float(lv), negate, HPARAMS) or (0.0,))[0] for lv in levels]
        assert mine.tolist() == [float(t) for t in theirs]


# --- each op's pixels against timm's PIL op --------------------------------------------------------

@pytest.mark.parametrize("name", SUPPORTED)
@pytest.mark.parametrize("level, negate", [(3.0, False), (7.5, True), (10.0, False), (1.7, True)])
def test_each_op_matches_timms_pil_op(name, level, negate):
    from timm.data import auto_augment as aa

    x = _images()
    args = _timm_args(name, level, negate, HPARAMS)
    for cubic in ((False, True) if name in GEOMETRIC else (False,)):
        kw = {"fillcolor": FILL, "resample": Image.BICUBIC if cubic else Image.BILINEAR}
        fn = aa.NAME_TO_OP[name]
        if name.startswith("Posterize"):
            from harness.data import _posterize_keep_zero_bits as fn  # harness's 0-bit posterize (Pillow >= 12)
        ref = torch.stack([_tensor(fn(_pil(im), *args, **kw)) for im in x])
        arg = torch.full((len(x),), float(args[0]) if args else 0.0, dtype=torch.float64)
        mine = apply_op(name, x, arg, bicubic=cubic, fill=torch.tensor(FILL, dtype=torch.float32))
        assert mine.dtype == torch.uint8 and mine.shape == x.shape
        assert torch.equal(mine, ref), (name, cubic, (mine.int() - ref.int()).abs().max())


def test_zero_bit_posterize_is_black_and_rotation_by_zero_is_the_image():
    x = _images(4)
    zero = torch.zeros(4, dtype=torch.float64)
    assert apply_op("PosterizeIncreasing", x, zero).max() == 0
    for name in ("Rotate", "ShearX", "TranslateXRel"):
        for cubic in (False, True):
            assert torch.equal(apply_op(name, x, zero, bicubic=cubic, fill=torch.tensor(FILL, dtype=torch.float32)), x)


# --- a whole RandAugment with timm's own draws ------------------------------------------------------

def _record_timm(ra, imgs: torch.Tensor, *, run_ops: bool = True) -> tuple[torch.Tensor, Draws]:
    """timm's RandAugment per image (harness's ops, as BatchAugment builds them), recording each applied
    op's name, argument and filter as timm drew them: its output and the same draws as Draws.
    `run_ops=False`: record only (the draws do not depend on the pixels)."""
    from timm.data import auto_augment as aa

    names = [op.name for op in ra.ops]
    calls: list[tuple[int, float, bool]] = []
    originals = [op.aug_fn for op in ra.ops]

    def recorder(i, fn, geometric):
        def aug_fn(img, *args, **kwargs):
            if geometric:  # resolve the filter as timm's own op would, then pass it fixed
                kwargs = dict(kwargs)
                kwargs["resample"] = aa._interpolation(kwargs)
            calls.append((i, float(args[0]) if args else 0.0, kwargs.get("resample") == Image.BICUBIC))
            return fn(img, *args, **kwargs) if run_ops else img
        return aug_fn

    for i, op in enumerate(ra.ops):
        op.aug_fn = recorder(i, originals[i], names[i] in GEOMETRIC)
    outs, per_image = [], []
    try:
        for im in imgs:
            calls.clear()
            outs.append(_tensor(ra(_pil(im))))
            per_image.append(list(calls))
    finally:
        for op, fn in zip(ra.ops, originals):
            op.aug_fn = fn
    n, layers = len(imgs), ra.num_layers
    d = Draws(torch.zeros(n, layers, dtype=torch.long), torch.zeros(n, layers, dtype=torch.bool),
              torch.zeros(n, layers, dtype=torch.float64), torch.zeros(n, layers, dtype=torch.bool))
    for r, cs in enumerate(per_image):
        for layer, (i, arg, cubic) in enumerate(cs):
            d.op[r, layer], d.applied[r, layer], d.arg[r, layer], d.bicubic[r, layer] = i, True, arg, cubic
    return torch.stack(outs), d


@pytest.mark.parametrize("config", ["rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "rand-m10-n3-p1.0-mstd101"])
def test_same_draws_give_timms_pixels(config):
    ds = load(DataSpec(image_size=32), CPU)
    aug = BatchAugment(ds, get_recipe("vit").model_copy(update={"randaugment": config}), device=CPU)
    for x in (ds.train.x[:96], _images(48, size=40, seed=2)):  # handwriting (flat, 0/255-heavy) and photo-like
        random.seed(0), np.random.seed(0)
        ref, draws = _record_timm(aug.randaugment, x)
        mine = aug.device_randaugment.apply(x, draws)
        assert draws.applied.any(1).float().mean() > 0.5  # most images got an op
        assert torch.equal(mine, ref), (mine.int() - ref.int()).abs().max()


# --- the draws: timm's distribution ----------------------------------------------------------------

def _chi2_same(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import chi2_contingency

    keep = (a + b) > 0
    return chi2_contingency(np.stack([a[keep], b[keep]])).pvalue


@pytest.mark.parametrize("config", ["rand-m9-mstd0.5-inc1", "rand-m6-n3-p0.7-mstd1-tweights", "rand-m7-mstd101"])
def test_draw_distribution_matches_timms(config):
    from timm.data.auto_augment import rand_augment_transform

    ra = rand_augment_transform(config, dict(HPARAMS))
    dev = DeviceRandAugment(ra)
    k, layers = len(ra.ops), ra.num_layers
    random.seed(1), np.random.seed(1)
    _, theirs = _record_timm(ra, _images(DRAW_IMAGES, size=8, seed=1), run_ops=False)
    mine = dev.draw(DRAW_IMAGES, torch.Generator().manual_seed(1))
    # Which op applied, per image: timm's record only holds applied ops, in order, so compare the
    # multiset of applied ops (counts over all layers) and how many applied per image.
    def counts(d):
        ops = np.bincount(d.op[d.applied].numpy(), minlength=k)
        per_image = np.bincount(d.applied.sum(1).numpy(), minlength=layers + 1)
        return ops, per_image
    (mo, mn), (to, tn) = counts(mine), counts(theirs)
    assert _chi2_same(mo, to) > CHI2_P_MIN, (mo, to)
    assert _chi2_same(mn, tn) > CHI2_P_MIN, (mn, tn)
    # Each op's arguments: the same histogram (magnitude noise, clipping, sign, posterize/solarize steps).
    for i, op in enumerate(ra.ops):
        a, b = mine.arg[mine.applied & (mine.op == i)].numpy(), theirs.arg[theirs.applied & (theirs.op == i)].numpy()
        if op.name in ("AutoContrast", "Equalize", "Invert") or len(a) < 50 or len(b) < 50:
            continue
        edges = np.unique(np.quantile(np.concatenate([a, b]), np.linspace(0, 1, 9)))
        if len(edges) < 3:
            assert set(np.unique(a)) == set(np.unique(b)), op.name
            continue
        ha, hb = np.histogram(a, edges)[0], np.histogram(b, edges)[0]
        assert _chi2_same(ha, hb) > CHI2_P_MIN, (op.name, ha, hb)
    geo = [i for i, op in enumerate(ra.ops) if op.name in GEOMETRIC]
    gm, gt = (d.applied & torch.isin(d.op, torch.tensor(geo)) for d in (mine, theirs))
    cubic = np.array([[mine.bicubic[gm].sum(), (~mine.bicubic[gm]).sum()], [theirs.bicubic[gt].sum(), (~theirs.bicubic[gt]).sum()]])
    assert _chi2_same(cubic[:, 0], cubic[:, 1]) > CHI2_P_MIN


# --- BatchAugment: which path, and the CPU one unchanged ----------------------------------------------

def test_cpu_batches_keep_timms_pil_path(monkeypatch):
    ds = load(DataSpec(image_size=16), CPU)
    aug = BatchAugment(ds, get_recipe("vit"), device=CPU)
    assert aug.device_randaugment is not None and aug.randaugment_on_device is None
    monkeypatch.setattr(aug.device_randaugment, "apply", lambda *a: (_ for _ in ()).throw(AssertionError("device path")))
    aug(ds.train.x[:8], torch.Generator().manual_seed(0))  # the PIL path: no AssertionError
    assert aug.describe().endswith("RandAugment, erasing")


def test_the_device_path_is_taken_for_cuda_batches():
    ds = load(DataSpec(image_size=16), CPU)
    aug = BatchAugment(ds, get_recipe("vit"), device=CPU)

    class CudaBatch:
        is_cuda = True

    assert aug._randaugment_here(CudaBatch()) and not aug._randaugment_here(ds.train.x[:2])
    forced = BatchAugment(ds, get_recipe("vit"), device=CPU, randaugment_on_device=True)
    assert forced._randaugment_here(ds.train.x[:2])
    assert not BatchAugment(ds, get_recipe("vit"), device=CPU, randaugment_on_device=False)._randaugment_here(CudaBatch())


def test_device_path_draws_per_image_and_replays_from_the_seed():
    """As test_fitted's PIL test: 64 copies of one image come out as many images; the same global seed
    (fit() reseeds it every epoch) gives the same batch: a resumed run replays its augmentations."""
    ds = load(DataSpec(image_size=16), CPU)
    aug = BatchAugment(ds, get_recipe("vit").model_copy(update={"crop": "none", "random_erasing": 0.0}), device=CPU,
                       randaugment_on_device=True)
    x = ds.train.x[:1].expand(64, -1, -1, -1).contiguous()
    torch.manual_seed(0)
    a = aug(x, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    b = aug(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert len({a[i].numpy().tobytes() for i in range(64)}) > 20


def test_ops_without_a_device_form_fall_back_to_pil():
    from timm.data.auto_augment import rand_augment_transform

    assert not DeviceRandAugment.supports(rand_augment_transform("rand-m9-t3a", dict(HPARAMS)))  # GaussianBlur, Desaturate
    assert DeviceRandAugment.supports(rand_augment_transform("rand-m9-mstd0.5-inc1", dict(HPARAMS)))
    assert not DeviceRandAugment.supports(rand_augment_transform("rand-m9", {**HPARAMS, "interpolation": Image.NEAREST}))


@pytest.mark.gpu  # skips without CUDA, fails instead with HARNESS_REQUIRE_CUDA=1 (tests/conftest.py)
def test_on_cuda_same_pixels_as_on_cpu_and_no_host_sync():
    """The GPU check: the same draws give the CPU's pixels, bit for bit (every op is IEEE double, float32
    elementwise or integer: no TF32, no reduction order at stake), and nothing in it waits for the device."""
    x = _images(64, size=64)
    from timm.data.auto_augment import rand_augment_transform

    xc = x.cuda()
    dev = DeviceRandAugment(rand_augment_transform("rand-m9-mstd0.5-inc1", dict(HPARAMS)), device=xc.device)
    d = dev.draw(64, torch.Generator().manual_seed(0))
    cpu = dev.apply(x, d)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu = dev.apply(xc, d)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.equal(gpu.cpu(), cpu)
