"""`harness doctor`: the checks users run by hand before training (the ViT tuning checklist) and the
recipe lint of the ViT/Swin failure write-up's debugging checklist, as functions that take a model and
data objects.

Its rooms: `probes.py` (shapes, gradients, the 32-sample overfit test, and `CheckResult`),
`lr_range.py` (the lr range test), `lint.py` (the recipe lint); here, `run_doctor` (all of them on one
model and recipe, sharing the probe set-up) and `checkup` (what the command does: resolve, check, write
the lr range page, record). Every threshold is a named constant with its source, beside the check
that uses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from harness.doctor.lint import (  # noqa: F401
    COUPLED_DECAY,
    LINT_RULES,
    LR_REFERENCE_BATCH,
    MAX_LR_NO_WARMUP,
    MIXUP_MIN_BATCH,
    LintRule,
    lint_recipe,
    lr_per_512,
)
from harness.doctor.lr_range import (  # noqa: F401
    LR_CPU_BATCH,
    LR_DIVERGE_FACTOR,
    LR_MIN_LOSS_RATIO,
    LR_SKIP_DIVERGED,
    LR_SKIP_PART,
    LR_SMOOTHING_BETA,
    LR_SPAN,
    LR_START_POINTS,
    LR_STEPS,
    LR_TOO_LOW_FACTOR,
    LrCurve,
    check_lr_range,
    lr_range_test,
)
from harness.doctor.probes import (  # noqa: F401
    FAIL,
    FAMILIES,
    GRAD_NORM_RANGE,
    GRAD_PROBE_LR,
    GRAD_RECHECK_STEPS,
    OVERFIT_LR,
    OVERFIT_LR_OTHER,
    OVERFIT_SAMPLES,
    OVERFIT_STEPS,
    OVERFIT_TARGET_ACC,
    PASS,
    TRANSFORMERS,
    WARN,
    CheckResult,
    check_gradients,
    check_overfit,
    check_shapes,
    cycle,
    expected_stages,
)
from harness.models import stand_in_label
from harness.recipes import Recipe

# --- the whole doctor run -----------------------------------------------------------------------

@dataclass
class DoctorReport:
    model: str  # what ran
    stands_for: str | None
    recipe: Recipe
    family: str
    data: str
    device: str
    results: list[CheckResult]
    seconds: dict[str, float]  # wall time per check
    cpu_seconds: dict[str, float]  # this process's CPU time per check
    lr_curve: LrCurve | None = None  # judged: with the recipe's lr at the sweep's batch

    def label(self) -> str:
        return stand_in_label(self.model, self.stands_for)

    def failed(self) -> bool:
        return any(r.status == FAIL for r in self.results)


def run_doctor(*, model: str, recipe: Recipe, data_spec: Any, device: torch.device, stands_for: str | None = None,
               seed: int = 0, overfit_steps: int = OVERFIT_STEPS, lr_steps: int = LR_STEPS, probe_batch: int | None = None,
               log: Callable[[str], None] = lambda s: None) -> DoctorReport:
    """All checks on `model` (a registry name, already resolved for scale) with `recipe`."""
    from harness import data as data_mod
    from harness.models import build_model, get_model_entry

    entry = get_model_entry(model)
    size = data_spec.image_size
    ds = data_mod.load(data_spec, device)
    plain = data_mod.BatchAugment(ds, device=device)  # normalisation only
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    results: list[CheckResult] = []
    clock: dict[str, float] = {}

    def start() -> None:
        clock["wall"], clock["cpu"] = time.monotonic(), time.process_time()

    def done(name: str, status: str) -> None:
        # CPU time beside wall time: on a shared machine the wall clock says more about the
        # neighbours than about the check.
        seconds[name] = time.monotonic() - clock["wall"]
        cpu_seconds[name] = time.process_time() - clock["cpu"]
        log(f"  {name:<10} {status}  ({seconds[name]:.1f}s wall, {cpu_seconds[name]:.1f}s CPU)")

    def fresh(**kw: float) -> torch.nn.Module:
        torch.manual_seed(seed)  # every probe starts from the same initialisation
        return build_model(model, num_classes=ds.num_classes, image_size=size, **kw).to(device)

    g = torch.Generator(device=device).manual_seed(seed)
    x32, y32 = next(ds.train.batches(OVERFIT_SAMPLES, shuffle=True, generator=g, drop_last=False))
    sample = data_mod.TensorSplit(x32, y32)

    start()
    patch = entry.size_kwargs(size).get("patch_size")
    # Shapes follow the architecture's size rule, not its recipe family: a ConvNeXt (Swin's recipe) has a CNN's stages.
    results.append(check_shapes(fresh(), family=entry.shape_rule, image_size=size, num_classes=ds.num_classes, patch_size=patch))
    done("shapes", results[-1].status)

    start()
    results += check_gradients(fresh(), plain.normalize(x32), y32)
    done("gradients", f"{results[-2].status}/{results[-1].status}")
    seconds["grad_norm"], cpu_seconds["grad_norm"] = seconds["gradients"], cpu_seconds["gradients"]

    start()
    lr = OVERFIT_LR.get(entry.family, OVERFIT_LR_OTHER)
    results.append(check_overfit(fresh(), sample, normalize=plain.normalize, lr=lr, steps=overfit_steps, seed=seed))
    done("overfit", results[-1].status)

    start()
    # The recipe's lr moved to the sweep's batch by the linear rule recipes use (see LR_CPU_BATCH).
    batch = min(recipe.batch_size, len(ds.train), probe_batch or (recipe.batch_size if device.type == "cuda" else LR_CPU_BATCH))
    recipe_lr = recipe.scaled_lr() * batch / recipe.batch_size
    # The recipe's crop and flip, without RandAugment and erasing (100 steps are too few to average them out).
    augment = data_mod.BatchAugment(ds, recipe.model_copy(update={"randaugment": None, "random_erasing": 0.0}), device=device)
    curve = lr_range_test(fresh(drop_rate=recipe.drop_rate, drop_path_rate=recipe.drop_path_rate), ds.train, recipe,
                          augment=augment, lr_min=recipe_lr / LR_SPAN, lr_max=recipe_lr * LR_SPAN,
                          steps=lr_steps, batch_size=batch, seed=seed)
    lr_result = check_lr_range(curve, recipe_lr, recipe_desc=(
        f"recipe lr {recipe.scaled_lr():.2g} at batch {recipe.batch_size} = {recipe_lr:.2g} at batch {batch}"
        if batch != recipe.batch_size else f"recipe lr {recipe_lr:.2g}"))
    results.append(lr_result)
    done("lr_range", lr_result.status)

    results += lint_recipe(recipe, entry.family)
    return DoctorReport(model, stands_for, recipe, entry.family, ds.description, str(device), results, seconds,
                        cpu_seconds, lr_curve=replace(curve, recipe_lr=recipe_lr))


def format_table(report: DoctorReport) -> str:
    """The printed table: every non-lint check and the lint rules that fired (one line if none),
    each with its fix on the line below."""
    shown = [r for r in report.results if not r.check.startswith("lint.")]
    lint = [r for r in report.results if r.check.startswith("lint.")]
    fired = [r for r in lint if r.status != PASS]
    shown += fired or [CheckResult("lint", PASS, f"{len(lint)} {report.family} rules checked, none fired", "")]
    width = max(len(r.check) for r in shown) + 2
    lines = [f"{'check':<{width}}{'status':<8}detail"]
    for r in shown:
        lines.append(f"{r.check:<{width}}{r.status:<8}{r.detail}")
        if r.fix:
            lines.append(f"{'':<{width + 8}}fix: {r.fix}")
    return "\n".join(lines)


# --- `harness doctor`: resolve, check, record ---------------------------------------------------

@dataclass
class Checkup:
    """A finished `harness doctor`: the report, the run it checked, where it was recorded."""

    report: DoctorReport
    spec: Any  # the RunSpec checked (a CPU stand-in's when `stands_for` is set)
    experiment_id: int
    html: Path  # the lr range test's page

    @property
    def exit_code(self) -> int:
        """0: no check FAILed; 1: one did (2, bad input, is the CLI's)."""
        return 1 if self.report.failed() else 0

    def as_json(self, *, db: str, total_s: float, total_cpu_s: float) -> dict[str, Any]:
        from harness.store import json_safe

        r = self.report
        return json_safe({"model": r.model, "stands_for": r.stands_for, "label": r.label(), "recipe": r.recipe.name,
                          "data": r.data, "device": r.device, "exit_code": self.exit_code, "experiment_id": self.experiment_id,
                          "db": db, "lr_range_html": str(self.html), "seconds": r.seconds, "cpu_seconds": r.cpu_seconds,
                          "total_s": total_s, "total_cpu_s": total_cpu_s, "checks": [c.as_dict() for c in r.results]})


def checkup(model: str, recipe: str, data_spec: Any, *, overrides: dict[str, Any], scale: str, device: str, seed: int,
            threads: int | None, overfit_steps: int, lr_steps: int, db: str, out: Path,
            log: Callable[[str], None]) -> Checkup:
    """What `harness doctor` does: the model resolved for scale (the CPU stand-in on a CPU with `auto`),
    every input validated before anything runs, the checks, the lr range page in `out`, the results
    in `db`. `db` and `out` are checked by the caller."""
    import yaml

    from harness.dashboards.figures import lr_range_figure
    from harness.errors import UserError
    from harness.models import resolve_scale
    from harness.process import resolve_device
    from harness.runner import record_checks
    from harness.specs import resolve_run

    if threads is not None and threads < 1:
        raise UserError("--threads", threads, "Use 1 or more.")
    dev = resolve_device(device)
    run_model, stands_for = resolve_scale(model, scale, cuda=dev.type == "cuda")
    spec = resolve_run(model=run_model, recipe=recipe, data=data_spec, overrides=overrides, seed=seed, device=str(dev),
                       stands_for=stands_for)
    if stands_for is not None:
        resolve_run(model=model, recipe=recipe, data=data_spec, overrides=overrides)  # the named model must fit too
    if threads:
        torch.set_num_threads(threads)
    log(f"doctor: {spec.label()} with recipe {spec.recipe.name} on {data_spec.name} {data_spec.image_size}px, {dev}")
    report = run_doctor(model=run_model, recipe=spec.recipe, data_spec=data_spec, device=dev, stands_for=stands_for,
                        seed=seed, overfit_steps=overfit_steps, lr_steps=lr_steps, log=log)
    out.mkdir(parents=True, exist_ok=True)
    html = out / f"lr_range_{run_model}_{spec.recipe.name}.html"
    lr_range_figure(report.lr_curve, f"lr range test: {spec.label()}, recipe {spec.recipe.name}").write_html(
        html, include_plotlyjs="directory")  # plotly.min.js beside it: opens offline
    exp = record_checks(report, db=db, spec_yaml=yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), html=html)
    return Checkup(report, spec, exp, html)
