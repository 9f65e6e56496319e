"""What a trial sets for itself at the start of fit() (issue 23 items 5-8, issue 21): a Ray worker runs
many trials in one process, so nothing process-wide may carry over from the previous trial. Tested on a
CPU: what only a GPU has (memory caps, cache release, compiled kernels) is mocked and the calls checked.

- torch.compile: fixed shapes (`dynamic=False`) from a clean dynamo state, every run that compiles;
- torch threads: the run's own, or the process's own when the run names none (not the last trial's);
- cuDNN autotuning / TF32: set both ways on every build;
- the GPU memory share Ray granted: capped on the card, lifted for a whole-card trial after a shared one;
  the previous trial's cached memory freed at the start and the end of each fit;
- a CPU checkpoint resumed on a GPU keeps the optimizer the GPU build made (fused);
- data at GPU sizes: native images resized per batch on CUDA, the CPU's split resized once as before;
  loader workers from the CPUs granted, not the machine's.
"""

from __future__ import annotations

import pytest
import torch

from harness import data as data_mod
from harness import process, train
from harness.datasets import DataSpec
from harness.specs import resolve_run

CPU = torch.device("cpu")


class Stop(Exception):
    """Raised by a mock to end fit() right after the decision under test."""


def _spec(**fields):
    fields.setdefault("epochs", 1)
    return resolve_run(model="resnet18", recipe="naive", data=DataSpec(image_size=16, train_size=128), **fields)


# --- torch.compile: fixed shapes, dynamo reset per run ---------------------------------------------

def test_each_fit_that_compiles_resets_dynamo_and_compiles_static_shapes(monkeypatch):
    """Two fits in one process (a reused Ray worker) at two batch sizes: each starts from a clean dynamo
    state and compiles with dynamic=False (torch.compile mocked: its kernels need a compiler and minutes;
    each fit stops at its first epoch, after the build)."""
    calls: list = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: calls.append("reset"))

    def compile(model, **kw):
        calls.append(("compile", kw))
        return model  # eager stands in for the compiled module

    def first_epoch(t, split, g, step):
        calls.append(("epoch", t.batch_size))
        raise Stop

    monkeypatch.setattr(torch, "compile", compile)
    monkeypatch.setattr(train, "train_epoch", first_epoch)
    for bs in (32, 16):
        with pytest.raises(Stop):
            train.fit(_spec(compile=True, batch_size=bs))
    assert calls == ["reset", ("compile", {"dynamic": False}), ("epoch", 32),
                     "reset", ("compile", {"dynamic": False}), ("epoch", 16)]


def test_a_fit_without_compile_leaves_dynamo_alone(monkeypatch):
    monkeypatch.setattr(torch._dynamo, "reset", lambda: (_ for _ in ()).throw(AssertionError("reset")))
    t = train.build_training(_spec(), data_mod.load(_spec().data, CPU), CPU)
    assert t.step_model is t.model


# --- threads, backend flags ------------------------------------------------------------------------

def _threads_at_load(monkeypatch, spec) -> int:
    seen = []

    def load(data, dev):
        seen.append(torch.get_num_threads())
        raise Stop

    monkeypatch.setattr(train.data_mod, "load", load)
    with pytest.raises(Stop):
        train.fit(spec)
    return seen[0]


def test_a_run_gets_its_own_threads_or_the_processs_not_the_last_runs(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(process, "_threads_before_fit", None)
    other = 1 if before != 1 else 2
    try:
        assert _threads_at_load(monkeypatch, _spec(threads=other)) == other
        assert _threads_at_load(monkeypatch, _spec(threads=None)) == before  # not the previous trial's
        assert _threads_at_load(monkeypatch, _spec(threads=other)) == other
    finally:
        torch.set_num_threads(before)


def test_backend_flags_are_set_both_ways_every_build():
    flags = lambda: (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,  # noqa: E731
                     torch.backends.cuda.matmul.allow_tf32)
    saved = flags()
    try:
        process.set_backend_flags(True)  # a CUDA trial
        assert flags() == (True, True, True)
        spec = _spec()
        train.build_training(spec, data_mod.load(spec.data, CPU), CPU)  # the next trial on this worker, on the CPU
        assert flags() == process._CPU_BACKEND_FLAGS
    finally:
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) = saved


# --- the GPU memory share and the cache between trials ----------------------------------------------

@pytest.fixture
def fake_cuda(monkeypatch):
    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: calls.append(("fraction", f, d)))
    monkeypatch.setattr(process, "_capped_devices", set())
    return calls


def test_memory_share_arithmetic(fake_cuda):
    dev = torch.device("cuda")
    process.set_memory_share(dev, 0.25)  # four trials packed on one card
    process.set_memory_share(dev, 0.5)
    process.set_memory_share(dev, None)  # a whole-card trial next on this worker: the cap is lifted
    process.set_memory_share(dev, 1.0)  # nothing capped any more: nothing to do
    process.set_memory_share(dev, 0.0)  # no share is no cap (Ray grants 0 only to CPU trials)
    process.set_memory_share(CPU, 0.5)  # a CPU trial: no card to cap
    assert fake_cuda == [("fraction", 0.25, dev), ("fraction", 0.5, dev), ("fraction", 1.0, dev)]


def test_fit_frees_the_cache_and_caps_its_share_before_loading_and_frees_after(monkeypatch, fake_cuda):
    def load(data, dev):
        fake_cuda.append(("load", dev))
        raise Stop

    monkeypatch.setattr(train.data_mod, "load", load)
    dev = torch.device("cuda:1")
    with pytest.raises(Stop):
        train.fit(_spec(device="cuda:1"), gpu_share=0.25)
    assert fake_cuda == [("set_device", dev), "empty_cache", ("fraction", 0.25, dev), ("load", dev), "empty_cache"]


def test_a_ray_trial_on_bare_cuda_caps_an_indexed_card(monkeypatch, fake_cuda):
    """A trial on `device: auto` that Ray granted part of a card trains on "cuda" (no index: its card is
    cuda:0 under the CUDA_VISIBLE_DEVICES Ray set); torch's set_per_process_memory_fraction refuses a
    device without an index, so fit() gives it the current card's."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(train.data_mod, "load", lambda data, dev: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        train.fit(_spec(device="cuda"), gpu_share=0.5)
    card = torch.device("cuda", 0)
    assert fake_cuda == [("set_device", card), "empty_cache", ("fraction", 0.5, card), "empty_cache"]
    assert all(d.index is not None for d in process._capped_devices)


def test_a_cpu_fit_touches_no_cuda_state(monkeypatch, fake_cuda):
    monkeypatch.setattr(train.data_mod, "load", lambda data, dev: (_ for _ in ()).throw(Stop()))
    with pytest.raises(Stop):
        train.fit(_spec(device="cpu"), gpu_share=0.5)
    assert fake_cuda == []


# --- a CPU checkpoint resumed on a GPU: the optimizer the GPU build made ------------------------------

def test_resuming_keeps_the_optimizer_built_for_this_device(monkeypatch, tmp_path):
    """fit() on the CPU writes last.pt (Adam, not fused); the resumed build asks for fused Adam (as a CUDA
    build does; fused Adam also runs on CPU tensors, so nothing is mocked but the device decision)."""
    spec = _spec(checkpoint_dir=tmp_path, eval_samples=0)
    train.fit(spec)
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["optimizer"]
    assert not saved["param_groups"][0].get("fused")
    build = train.build_optimizer
    monkeypatch.setattr(train, "build_optimizer", lambda model, recipe, fused=False: build(model, recipe, fused=True))
    t = train.build_training(spec, data_mod.load(spec.data, CPU), CPU)
    assert t.optimizer.param_groups[0]["fused"]
    plain = torch.optim.Adam(t.model.parameters(), fused=True)
    plain.load_state_dict(saved)  # what load_state_dict alone does: the checkpoint's flag wins
    assert not plain.param_groups[0]["fused"]
    p = train.restore(tmp_path / "last.pt", spec.model_copy(update={"epochs": 2}), t)
    assert p.epoch == 1 and all(g["fused"] for g in t.optimizer.param_groups)
    g = torch.Generator().manual_seed(0)
    ds = data_mod.load(spec.data, CPU)
    sums, _ = train.train_epoch(t, ds.train, g, p.global_step)  # the fused step runs on the restored state
    assert sums.steps > 0 and torch.isfinite(sums.loss_sum)


# --- data at GPU sizes ------------------------------------------------------------------------------

def test_native_images_resized_per_batch_equal_the_split_resized_once():
    """On CUDA the split stays native and each batch is resized; on the CPU the whole split is resized
    once, as before. Same images either way (bit for bit, on the CPU)."""
    g = torch.Generator().manual_seed(0)
    native = torch.randint(0, 256, (100, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.arange(100)
    split = data_mod.TensorSplit(native, y, size=24)
    once, per_batch = split.to(CPU), split.to(CPU, per_batch=True)
    assert once.size is None and once.x.shape[-1] == 24 and per_batch.x.shape[-1] == 8
    assert torch.equal(once.x, data_mod._resize_uint8(native, 24))
    a = list(once.batches(32, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=True))
    b = list(per_batch.batches(32, shuffle=True, generator=torch.Generator().manual_seed(1), drop_last=True))
    assert len(a) == len(b) == 3 and all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert data_mod.head(per_batch, 10).size == 24  # the train-accuracy probe comes out at the run's size too


def test_digits_on_the_cpu_are_resized_once_as_before():
    ds = data_mod.load(DataSpec(image_size=24), CPU)
    assert ds.train.size is None and ds.train.x.shape[1:] == (3, 24, 24)


def test_loader_workers_come_from_the_granted_cpus(monkeypatch):
    monkeypatch.setattr(data_mod.os, "sched_getaffinity", lambda pid: set(range(32)))
    assert data_mod.granted_cpus() == 32 and data_mod.auto_workers() == data_mod.MAX_AUTO_WORKERS
    assert data_mod.granted_cpus(4) == 4 and data_mod.auto_workers(4) == 2  # a Ray trial granted 4 CPUs
    assert data_mod.auto_workers(1) == 0  # decode in the training process
    monkeypatch.setattr(data_mod.os, "sched_getaffinity", lambda pid: {0, 1})
    assert data_mod.granted_cpus(8) == 2  # never more than the process may run on
    assert train.run_data(_spec(threads=4)).workers == 1
    assert train.run_data(_spec()).workers is None  # no grant: the loader counts its own
    fixed = _spec(threads=4).model_copy(update={"data": DataSpec(image_size=16, workers=3)})
    assert train.run_data(fixed).workers == 3  # the spec's own count is kept


# --- on a GPU (skipped here; run by the GPU check) --------------------------------------------------

cuda_only = pytest.mark.gpu  # skips without CUDA, fails instead with HARNESS_REQUIRE_CUDA=1 (tests/conftest.py)


@cuda_only
def test_on_cuda_native_images_resized_per_batch_match_the_cpus():
    """load() keeps native images on CUDA and resizes each batch there: within one level of the CPU's
    resize (the same formula; float rounding of two devices)."""
    cuda = torch.device("cuda")
    spec = DataSpec(image_size=32, train_size=256)
    on_gpu, on_cpu = data_mod.load(spec, cuda), data_mod.load(spec, CPU)
    assert on_gpu.train.size == 32 and on_gpu.train.x.shape[-1] == 8  # digits stay 8x8 on the card
    a = next(on_gpu.train.batches(256, shuffle=False, generator=None, drop_last=False))[0].cpu()
    b = next(on_cpu.train.batches(256, shuffle=False, generator=None, drop_last=False))[0]
    assert a.shape == b.shape and (a.int() - b.int()).abs().max() <= 1


@cuda_only
def test_on_cuda_the_share_is_capped_and_lifted_by_the_next_whole_card_trial():
    spec = _spec(device="cuda", eval_samples=0)
    card = torch.device("cuda", torch.cuda.current_device())  # torch's per-card calls want an index
    train.fit(spec, gpu_share=0.25)  # device "cuda", as a Ray trial on `device: auto` gets it
    assert torch.cuda.get_per_process_memory_fraction(card) == pytest.approx(0.25)
    train.fit(spec)  # a whole-card trial next in the same process
    assert torch.cuda.get_per_process_memory_fraction(card) == pytest.approx(1.0)
