"""The throughput benchmark's pure parts, on CPU: the like-for-like configuration (issue 23 item 4),
the peak lookup and MFU (item 8), timing on the device doing the work (item 3).

Like for like means: each ratio's two sides run the same recipe, in its published form at the
benchmark's batch, so RandAugment (magnitude > 0), erasing and EMA are measured, on both sides or
neither. The fitted form of a few-update run would switch them off (shown below)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from harness.models import ALL, CPU_VARIANT
from harness.recipes import Budget, fit_recipe, get_recipe, randaugment_magnitude

REPO = Path(__file__).resolve().parent.parent
BENCH = 128  # the benchmark's default batch


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput():
    return load("throughput")


@pytest.fixture(scope="module")
def common():
    return load("_common")


@pytest.mark.parametrize("model", [*ALL, *CPU_VARIANT.values()])
def test_like_for_like_same_recipe_both_sides(throughput, model):
    """Both sides of each ratio get the same recipe: published form, the benchmark's batch, RandAugment
    at its published magnitude (> 0) on both _full paths, EMA the same on all four paths."""
    cfg = throughput.like_for_like(model, BENCH)
    assert cfg.reference == cfg.harness and cfg.reference_full == cfg.harness_full
    full, plain = cfg.harness_full, cfg.harness
    assert full is not None, "every shipped family recipe has per-image augmentation: the _full paths must run"
    published = get_recipe(full.name)
    assert full.form == plain.form == "published"
    assert full.batch_size == plain.batch_size == BENCH
    # The _full paths: the published augmentation verbatim.
    assert full.randaugment == published.randaugment and randaugment_magnitude(full.randaugment) > 0
    assert full.random_erasing == published.random_erasing
    assert (full.crop, full.hflip) == (published.crop, published.hflip)
    # The plain paths: no per-image augmentation, every other field as the _full paths.
    assert plain.randaugment is None and plain.random_erasing == 0 and plain.crop == "none" and plain.hflip == 0
    differ = {k for k in type(full).model_fields if getattr(full, k) != getattr(plain, k)}
    assert differ <= set(throughput.AUGMENT_FIELDS)
    # EMA: on every path or on none, as published (EfficientNet's 0.9999).
    assert full.ema_decay == plain.ema_decay == published.ema_decay


def test_fitted_form_would_hide_the_augmentation():
    """Why the published form: fitted to a benchmark-sized run, RandAugment is off and erasing ~0, and
    EfficientNet's EMA is off, so harness_full would time the same work as harness."""
    budget = Budget(epochs=7, train_images=BENCH * 20, batch_size=BENCH)
    vit, effnet = fit_recipe(get_recipe("vit"), budget), fit_recipe(get_recipe("effnet"), budget)
    assert vit.randaugment is None and vit.random_erasing < 0.01
    assert effnet.ema_decay is None and get_recipe("effnet").ema_decay == 0.9999


def test_ema_built_on_both_sides(throughput):
    """The built objects agree with the configuration: timm's reference and harness's Training both hold
    an EMA for EfficientNet's published recipe, and harness_full's augmentation has RandAugment."""
    cfg = throughput.like_for_like("efficientnet_b0", 4)
    kw = {"image_size": 32, "batch_size": 4, "num_classes": 10, "device": torch.device("cpu"), "steps": 1}
    ref = throughput.build_reference("efficientnet_b0", cfg.reference, image_size=32, num_classes=10,
                                     device=torch.device("cpu"), steps=1)
    _, t = throughput.harness_loop("efficientnet_b0", cfg.harness, epochs=2, compile=False, **kw)
    _, t_full = throughput.harness_loop("efficientnet_b0", cfg.harness_full, epochs=2, compile=False, **kw)
    assert ref.ema is not None and t.ema is not None and t_full.ema is not None
    assert ref.ema.decay == t.ema.decay == 0.9999
    assert t.augment.randaugment is None and t_full.augment.randaugment is not None
    assert (t.batch_size, t.steps_per_epoch) == (t_full.batch_size, t_full.steps_per_epoch) == (4, 1)  # as the reference


def test_timm_loader_runs_the_recipes_augmentation(throughput):
    """reference_full's input: timm's train transform with the recipe's RandAugment (magnitude 9) and
    flip, batches normalised on the device at the benchmark's size."""
    from timm.data.auto_augment import RandAugment

    recipe = throughput.like_for_like("vit_tiny", 4).reference_full
    loader = throughput.timm_train_loader(recipe, image_size=32, batch_size=4, steps=2, num_classes=10,
                                          device=torch.device("cpu"), workers=0)
    (ra,) = [t for t in loader.dataset.transform.transforms if isinstance(t, RandAugment)]
    assert ra.ops[0].magnitude == 9
    batches = list(loader)
    assert len(batches) == 2
    x, y = batches[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (4,)
    assert abs(float(x.mean())) < 3  # normalised, not 0..255


@pytest.mark.parametrize(("name", "tflops"), [
    ("NVIDIA H200 NVL", 835.0),  # not the SXM part's 989.4 (issue 23 item 8)
    ("NVIDIA H200", 989.4),
    ("NVIDIA GH200 480GB", 989.4),
    ("NVIDIA H100 80GB HBM3", 989.4),
    ("NVIDIA H100 NVL", 835.0),
    ("NVIDIA H100 PCIe", 756.0),
    ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA L40S", 362.0),  # not L4's
    ("NVIDIA L4", 121.0),
    ("NVIDIA A10G", 70.0),  # not A10's
    ("NVIDIA A10", 125.0),
    ("Some Future GPU", None),
])
def test_peak_lookup(common, name, tflops):
    assert common.peak_tflops(name) == (pytest.approx(tflops) if tflops else None)


def test_mfu(common):
    """3 x forward FLOPs x img/s / peak: 1 GFLOP forward at 1000 img/s on a 300 TFLOPS card is 1%."""
    assert common.mfu_pct(1.0, 1000.0, 300.0) == pytest.approx(1.0)


def test_time_s_records_on_the_working_device(common, monkeypatch):
    """With --device cuda:1 the timing events are made and recorded on cuda:1's stream, inside
    `torch.cuda.device(cuda:1)` (mocked CUDA: no GPU here)."""
    current = {"device": 0}
    seen: list[tuple[str, int, object]] = []

    @contextlib.contextmanager
    def device_ctx(d):
        before, current["device"] = current["device"], torch.device(d).index
        try:
            yield
        finally:
            current["device"] = before

    class Event:
        def __init__(self, enable_timing=False):
            seen.append(("event", current["device"], None))

        def record(self, stream=None):
            seen.append(("record", current["device"], stream))

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return 250.0

    monkeypatch.setattr(torch.cuda, "device", device_ctx)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda d=None: f"stream-of-{torch.device(d)}")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: None)
    assert common.time_s(lambda: None, torch.device("cuda:1")) == pytest.approx(0.25)
    assert [s for s in seen if s[0] == "event"] == [("event", 1, None)] * 2
    assert [s for s in seen if s[0] == "record"] == [("record", 1, "stream-of-cuda:1")] * 2


@pytest.mark.parametrize(("asked", "current", "expected"), [("cuda", 0, "cuda:0"), ("cuda:1", 0, "cuda:1"),
                                                           ("cuda", 2, "cuda:2"), ("cpu", 0, "cpu")])
def test_working_device_is_indexed_and_current(common, monkeypatch, asked, current, expected):
    """`--device cuda` becomes the current card with its index (torch.cuda.set_device refuses a bare
    'cuda'), `cuda:N` is made current; the CPU is left alone (mocked CUDA)."""
    made_current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: made_current.append(torch.device(d)))
    assert common.working_device(torch.device(asked)) == torch.device(expected)
    assert made_current == ([] if asked == "cpu" else [torch.device(expected)])
