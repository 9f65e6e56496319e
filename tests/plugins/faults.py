"""A harness plugin for the reliability tests: real timm models that misbehave on cue.

Loaded like any user's plugin (`harness --plugin PATH ...`, or `harness.plugins.load([PATH])`), it
registers `faulty_resnet_test`, `faulty_resnet18` and `faulty_vit_tiny`: the same timm models as
`resnet_test`, `resnet18` and `vit_tiny`
(same init, same numbers) with a forward hook that counts training steps in a buffer (so the count
survives a checkpoint and a resume) and, at the steps its plan names, raises, sleeps, returns NaN or
raises CUDA's out-of-memory error. The training loop knows nothing of it.

The plan is the JSON file `faults.json` beside this file (tests copy both into a temporary folder:
see `fault_plugin` in tests/conftest.py). Its keys are Ray trial names (`trial_0`, as sweeps name
them; `run_0` for grids) or "*" for any run; each value may hold
  raise_at_step  (int)    raise RuntimeError("injected failure ...") at this training step (1-based)
  once_file      (path)   with raise_at_step: raise only while this file is absent, then create it
  nan_at_step    (int)    the model's output (so the loss) is NaN from this step on
  oom_at_step    (int)    raise torch.cuda.OutOfMemoryError at this step
  sleep_per_step (float)  seconds of sleep before every training step (so a test can stop a run midway)
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from harness.models import MODELS, ModelEntry, build_model, register

PLAN_FILE = Path(__file__).with_name("faults.json")


def _trial_name() -> str:
    try:
        from ray import tune

        return tune.get_context().get_trial_name() or "*"
    except Exception:  # noqa: BLE001 - not inside a Ray trial
        return "*"


def _plan() -> dict:
    plan = json.loads(PLAN_FILE.read_text()) if PLAN_FILE.is_file() else {}
    return plan.get(_trial_name(), plan.get("*", {}))


def _install(model: torch.nn.Module, plan: dict) -> torch.nn.Module:
    model.register_buffer("fault_step", torch.zeros((), dtype=torch.long))

    def before(module: torch.nn.Module, args: tuple) -> None:
        if not module.training:  # evaluation passes are not steps
            return
        module.fault_step += 1
        step = int(module.fault_step)
        if plan.get("sleep_per_step"):
            time.sleep(plan["sleep_per_step"])
        if plan.get("oom_at_step") == step:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected by tests/plugins/faults.py)")
        if plan.get("raise_at_step") == step:
            once = plan.get("once_file")
            if once is not None:
                if Path(once).exists():
                    return
                Path(once).touch()
            raise RuntimeError(f"injected failure at step {step}")

    def after(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        if module.training and plan.get("nan_at_step") is not None and int(module.fault_step) >= plan["nan_at_step"]:
            return out * float("nan")
        return out

    model.register_forward_pre_hook(before)
    model.register_forward_hook(after)
    return model


for inner in ("resnet_test", "resnet18", "vit_tiny"):
    if inner not in MODELS:  # resnet_test is newer than the old engine test_sweep.py resumes with
        continue
    entry = MODELS[inner]

    def factory(*, _inner: str = inner, **kwargs) -> torch.nn.Module:
        return _install(build_model(_inner, **kwargs), _plan())

    register(ModelEntry(f"faulty_{inner}", entry.family, entry.timm_name, f"{entry.description}; faults on cue (tests)",
                        fixed=entry.fixed, grid=entry.grid, factory=factory))
