"""The GPU-only decisions, tested on a CPU (issue 23): what only a GPU has is mocked.

- a Ray trial's device follows its grant (`engine.device_for_grant`), not `cuda.is_available()`
  (Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for a trial granted 0 GPUs);
- asking for no GPU where there are some is said once, with the fix;
- `gpu: auto` shares the cards among the concurrent trials (benchmark, ablate and sweep alike), and the
  Ray just started must count the GPUs torch counts;
- a trial granted a card that CUDA cannot use fails with the reason;
- fit() makes cuda:N the current device before building anything;
- channels_last where it is faster (CNNs on CUDA, efficientnet on the CPU), evaluation as training.
No training runs but one epoch of 64 images in the NHWC test: every other test stops at the decision it
checks (well under a second each).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from harness import engine, experiment, train
from harness.datasets import DataSpec
from harness.errors import UserError
from harness.evaluate import evaluate
from harness.resources import share_cards
from harness.specs import ResourcesSpec, resolve_run


class Stop(Exception):
    """Raised by a mock to end the code path right after the decision under test."""


def _spec(**fields):
    return resolve_run(model="resnet18", recipe="naive", data=DataSpec(), **fields)


# --- the device a trial trains on ---------------------------------------------------------------

@pytest.mark.parametrize("requested, gpu_ids, cuda, expected", [
    ("auto", [], True, "cpu"),           # granted nothing on a GPU machine: the CPU, not cuda:0
    ("auto", [], False, "cpu"),
    ("auto", ["0"], True, "cuda"),       # the granted card is cuda:0 under Ray's CUDA_VISIBLE_DEVICES
    ("auto", [3], True, "cuda"),         # ids are ints when CUDA_VISIBLE_DEVICES was unset at start
    ("cpu", ["0"], True, "cpu"),         # explicit cpu stays, grant or not
    ("cpu", [], True, "cpu"),
    ("cuda", ["1"], True, "cuda"),
    ("cuda:0", ["2"], True, "cuda:0"),   # index 0 of the granted cards
    ("cuda:1", ["2", "5"], True, "cuda:1"),
])
def test_device_for_grant(requested, gpu_ids, cuda, expected):
    assert engine.device_for_grant(requested, gpu_ids, cuda) == expected


@pytest.mark.parametrize("requested, gpu_ids, says", [
    ("cuda:1", ["0"], "granted 1 GPU (visible to it as cuda:0..cuda:0)"),  # only the grant is visible
    ("cuda", [], "granted no GPU"),  # a card nobody granted it
])
def test_device_for_grant_refuses_an_ungranted_card(requested, gpu_ids, says):
    with pytest.raises(UserError, match="device") as e:
        engine.device_for_grant(requested, gpu_ids, True)
    assert says in str(e.value)


def test_a_granted_card_cuda_cannot_use_fails_the_trial():
    """Not the CPU in its place: that would hold a card nobody uses and record CPU numbers as a GPU trial's."""
    with pytest.raises(RuntimeError, match=r"Ray granted this trial GPU 0 but torch cannot use CUDA"):
        engine.device_for_grant("auto", ["0"], False)


def test_a_user_error_raised_in_a_trial_survives_pickling():
    """Ray rebuilds a trial's exception by unpickling it: the recorded error is the message, not a TypeError."""
    import pickle

    e = pickle.loads(pickle.dumps(UserError("device", "cuda:3", "use auto.")))
    assert (e.field, e.value, e.fix, str(e)) == ("device", "cuda:3", "use auto.", "device: got 'cuda:3'. use auto.")


def test_an_lr_grids_progress_lines_say_the_lr():
    from harness.benchmark import load_grid, resolve_grid

    grid = resolve_grid(load_grid(None, models="vit_base", lrs="x1,x10"), cuda=False)
    labels = [engine.GridSpecs(tuple(grid.runs)).label({"run": i}) for i in range(len(grid.runs))]
    assert any(" / lr x10 (" in label for label in labels) and any(" / lr x1 (" in label for label in labels), labels


def test_trainable_trains_where_ray_granted(monkeypatch):
    """The wiring: on a GPU machine, a trial Ray granted no GPU hands fit() device cpu; one granted a
    share hands it cuda."""
    seen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(engine.trial.tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(engine.trial, "where_am_i", lambda: {"node": "n", "node_id": "x", "gpus": ""})
    monkeypatch.setattr(engine.trial, "fit", lambda spec, report, resume=None, gpu_share=None: seen.append((spec.device, gpu_share)))
    monkeypatch.setattr(engine.trial, "granted_gpu_share", lambda: 0.5)
    monkeypatch.setattr(engine.trial, "node_gpus", lambda: 1)
    monkeypatch.setattr(engine.trial, "granted_gpus", lambda: 0.5)
    spec = _spec()
    assert spec.device == "auto"
    for ids in ([], ["0"]):
        monkeypatch.setattr(engine.trial.ray, "get_gpu_ids", lambda ids=ids: ids)
        engine._trainable({"run": 0}, make_spec=lambda config: spec)
    assert seen == [("cpu", 0.5), ("cuda", 0.5)]  # fit gets the share Ray granted (it caps memory only on CUDA)


# --- the warning: no GPU asked for where there are some ------------------------------------------

def _run_trials_echo(monkeypatch, tmp_path: Path, resources: ResourcesSpec, *, gpus: int, field: str = "resources"):
    """run_trials up to the point where Ray would be used: what it echoed."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(engine.run, "ray_session", lambda address: __import__("contextlib").nullcontext())
    # As on a fresh `harness` process: the session's shared Ray (tests/conftest.py) may already be up, and
    # run_trials would then ask that Ray (0 GPUs) instead of this mocked machine.
    monkeypatch.setattr(engine.run.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(engine.run.ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": float(gpus)})

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(engine.run, "check_shared_storage", stop)
    said: list[str] = []
    with pytest.raises(Stop):
        engine.run_trials(engine.Trials(lambda c: None, total=1, concurrency=1, resources=resources, resources_field=field),
                          db=f"sqlite:///{tmp_path / 'r.db'}", storage_path=tmp_path / "ray",
                          experiment=engine.Experiment("sweep", "s", "", ""), echo=said.append)
    return said


def test_warns_once_when_no_gpu_is_asked_for_on_a_gpu_machine(monkeypatch, tmp_path):
    said = _run_trials_echo(monkeypatch, tmp_path, ResourcesSpec(cpu=1, gpu=0), gpus=2, field="studies/vit.yaml: resources")
    assert said == ["warning: studies/vit.yaml: resources.gpu is 0 on this machine with 2 GPUs: trials train on the "
                    "CPU; set resources: {gpu: auto} (the default) to share the cards among the trials that run at once, "
                    "or a number per trial."]


@pytest.mark.parametrize("resources, gpus", [(ResourcesSpec(cpu=1), 0), (ResourcesSpec(cpu=1), 2),
                                             (ResourcesSpec(cpu=1, gpu=0.5), 1)])
def test_no_warning_without_gpus_or_with_a_grant(monkeypatch, tmp_path, resources, gpus):
    assert _run_trials_echo(monkeypatch, tmp_path, resources, gpus=gpus) == []


# --- gpu: auto, the cards shared among the concurrent trials ------------------------------------------

def test_share_cards_rule():
    auto = ResourcesSpec(cpu=2)
    assert auto.gpu == "auto"  # the default, in every shipped study and grid
    assert share_cards(auto, gpus=0, concurrency=4) == ResourcesSpec(cpu=2, gpu=0)
    assert share_cards(auto, gpus=1, concurrency=4) == ResourcesSpec(cpu=2, gpu=0.25)
    assert share_cards(auto, gpus=1, concurrency=3).gpu == 0.333
    for asked in (ResourcesSpec(cpu=1, gpu=1), ResourcesSpec(cpu=1, gpu=0)):
        assert share_cards(asked, gpus=4, concurrency=4) == asked  # a number is asked for as written


@pytest.mark.parametrize("gpus", [0, 1, 2, 8])
@pytest.mark.parametrize("concurrency", range(1, 9))
def test_auto_spreads_concurrent_trials_over_the_cards(gpus, concurrency):
    got = share_cards(ResourcesSpec(cpu=1), gpus=gpus, concurrency=concurrency).gpu
    if gpus == 0:
        assert got == 0
        return
    assert 0 < got <= 1  # never more than one card per trial
    per_card = int(1 / got + 1e-9)  # how many of these shares one card holds
    assert per_card * gpus >= concurrency  # every trial can run at once, Ray packing cards first-fit
    assert got == 1 or per_card * (gpus - 1) < concurrency  # no card left idle while another holds two


@pytest.mark.parametrize("concurrency, gpus, share", [
    (4, 4, 1.0),  # a card each, not 4 x 0.25 stacked on card 0
    (8, 4, 0.5),  # two per card
    (6, 4, 0.5),  # 4/6 would fit one per card: 4 at a time; 0.5 runs all 6 (two cards hold two)
    (3, 2, 0.5),
    (2, 8, 1.0),  # more cards than trials: a card each, never more than one per trial
])
def test_auto_shares(concurrency, gpus, share):
    assert share_cards(ResourcesSpec(cpu=1), gpus=gpus, concurrency=concurrency).gpu == share


def test_ray_counting_fewer_gpus_than_the_trials_ask_for_is_refused():
    from harness.engine.cluster import check_ray_sees_the_gpus

    with pytest.raises(UserError, match=r"resources\.gpu: got 0\.5\. torch sees 1 GPU here but the Ray started for this "
                                        r"run counts 0, and each trial asks for 0\.5"):
        check_ray_sees_the_gpus(ResourcesSpec(cpu=1, gpu=0.5), torch_gpus=1, ray_gpus=0, field="resources")
    said = check_ray_sees_the_gpus(ResourcesSpec(cpu=1, gpu=1), torch_gpus=2, ray_gpus=1, field="resources")
    assert said == "note: torch sees 2 GPUs, Ray counts 1: trials are placed on Ray's"
    assert check_ray_sees_the_gpus(ResourcesSpec(cpu=1, gpu=0), torch_gpus=0, ray_gpus=0, field="resources") is None


def test_run_trials_resolves_auto_and_checks_the_ray_it_started(monkeypatch, tmp_path):
    """On a (mocked) 1-GPU machine, 2 concurrent trials at gpu: auto ask for half a card each; when the Ray
    started for the run counts no GPU, exit 2 with both counts before any row is written."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(engine.run, "ray_session", lambda address: __import__("contextlib").nullcontext())
    monkeypatch.setattr(engine.run.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(engine.run.ray, "cluster_resources", lambda: {"CPU": 2.0})  # Ray found no GPU
    db = tmp_path / "r.db"
    with pytest.raises(UserError, match=r"resources\.gpu: got 0\.5\. torch sees 1 GPU here but the Ray started"):
        engine.run_trials(engine.Trials(lambda c: None, total=2, concurrency=2, resources=ResourcesSpec(cpu=1)),
                          db=f"sqlite:///{db}", storage_path=tmp_path / "ray",
                          experiment=engine.Experiment("sweep", "s", "", ""), echo=lambda s: None)
    assert not db.exists()


def test_loader_workers_of_a_gpu_trial_follow_its_card_share():
    from harness.data import gpu_trial_workers

    assert gpu_trial_workers(16, node_gpus=1, granted_gpus=1) == 8  # capped at MAX_AUTO_WORKERS
    assert gpu_trial_workers(16, node_gpus=8, granted_gpus=1) == 1  # 2 cores: one decodes, one trains
    assert gpu_trial_workers(16, node_gpus=1, granted_gpus=0.5) == 7
    assert gpu_trial_workers(2, node_gpus=1, granted_gpus=1) == 1


@pytest.mark.parametrize("cuda", [True, False])
def test_ablate_asks_for_the_cards_its_models_were_chosen_for(monkeypatch, tmp_path, cuda):
    """The full model on a GPU machine, with gpu: auto (run_trials shares the cards: tested above)."""
    from harness import ablate

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    ab = ablate.resolve_ablation("vit_base", steps="clip", cuda=cuda)
    assert (ab.stands_for is None) == cuda  # the full model on the (mocked) GPU machine, the stand-in on CPU
    asked = []

    def run_trials(trials, **kw):
        asked.append(trials.resources)
        raise Stop

    monkeypatch.setattr(engine, "run_trials", run_trials)
    with pytest.raises(Stop):
        ablate.run_ablation(ab, experiment.Where(db=f"sqlite:///{tmp_path / 'r.db'}", out=tmp_path / "out"), concurrency=2,
                            echo=lambda s: None)
    assert asked == [ResourcesSpec(cpu=1, gpu="auto")]


# --- cuda:N is the current device in fit() -------------------------------------------------------

def _fit_until_data(monkeypatch, device: str) -> list:
    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))

    def load(data, dev):
        calls.append(("load", dev))
        raise Stop

    monkeypatch.setattr(train.data_mod, "load", load)
    with pytest.raises(Stop):
        train.fit(_spec(device=device))
    return calls


def test_fit_makes_cuda_n_current_before_building(monkeypatch):
    dev = torch.device("cuda:1")
    assert _fit_until_data(monkeypatch, "cuda:1") == [("set_device", dev), ("load", dev)]


def test_fit_leaves_the_current_device_alone_on_cpu(monkeypatch):
    assert _fit_until_data(monkeypatch, "cpu") == [("load", torch.device("cpu"))]


def test_fit_gives_plain_cuda_the_current_cards_index(monkeypatch):
    """Plain "cuda" (a Ray trial on `device: auto`) trains on the current card, named by its index: torch's
    per-card calls (the memory share) refuse a device without one."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    card = torch.device("cuda", 0)
    assert _fit_until_data(monkeypatch, "cuda") == [("set_device", card), ("load", card)]


# --- channels_last where it is faster; evaluation in the training memory format ------------------

def test_channels_last_by_default_where_it_is_faster():
    from harness.process import nhwc_by_default

    assert nhwc_by_default("resnet", cuda=True) and nhwc_by_default("efficientnet", cuda=True)
    assert nhwc_by_default("efficientnet", cuda=False)  # oneDNN's NHWC depthwise kernels
    assert not nhwc_by_default("resnet", cuda=False)  # no faster on the CPU
    assert not nhwc_by_default("vit", cuda=True) and not nhwc_by_default("swin", cuda=False)
    flag = train.Training.eval_channels_last.fget
    for device in ("cpu", "cuda:0"):
        assert flag(SimpleNamespace(channels_last=True, device=torch.device(device)))
        assert not flag(SimpleNamespace(channels_last=False, device=torch.device(device)))


def test_an_efficientnet_trains_nhwc_on_the_cpu():
    """build_training's default, end to end: the model's weights and the batches it trains on are NHWC;
    a resnet on the CPU stays NCHW."""
    from harness.data import load
    from harness.specs import resolve_run

    for model, nhwc in (("efficientnet_b0", True), ("resnet_test", False)):
        spec = resolve_run(model=model, recipe="naive", data=DataSpec(image_size=16, train_size=64), epochs=1,
                           batch_size=32)
        ds = load(spec.data, torch.device("cpu"))
        t = train.build_training(spec, ds, torch.device("cpu"))
        conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
        seen: list[bool] = []
        conv.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0].is_contiguous(memory_format=torch.channels_last)))
        train.train_epoch(t, ds.train, torch.Generator().manual_seed(0), 0)
        assert t.channels_last == nhwc and conv.weight.is_contiguous(memory_format=torch.channels_last) == nhwc
        assert seen and all(s == nhwc for s in seen), (model, seen)


@pytest.mark.parametrize("channels_last", [True, False])
def test_evaluate_feeds_the_memory_format_asked_for(channels_last):
    x = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1])
    split = SimpleNamespace(batches=lambda *a, **k: iter([(x, y)]))
    augment = SimpleNamespace(mean=torch.zeros(1, 3, 1, 1), normalize=lambda b: b.float() / 255)
    nhwc = []

    class Model(torch.nn.Module):
        def forward(self, b):
            nhwc.append(b.is_contiguous(memory_format=torch.channels_last))
            return b.flatten(1)[:, :2]

    loss, acc = evaluate(Model(), split, augment, batch_size=4, autocast=lambda: torch.autocast("cpu", enabled=False),
                               channels_last=channels_last)
    assert nhwc == [channels_last] and 0 <= acc <= 1 and loss == loss
