"""`harness ablate`: which ingredient of a recipe matters, for this model, at this budget.

The ladder goes from `naive` to the model's recipe (fitted to the same budget) one ingredient at a
time; an ingredient is a named group of recipe fields (`recipes.INGREDIENTS`). Modes:
- `add`: start from naive, add one ingredient per rung, cumulatively, in the given order;
- `drop`: start from the full recipe, remove one ingredient per rung (leave-one-out: each rung is the
  full recipe with that one ingredient taken back to naive's values);
- `both`: the two ladders (the order matters in `add` because ingredients interact; `drop` is the check).

Every rung x seed is a `RunSpec` run through the skeleton every grid uses (`experiment.run_experiment`), recorded as
one experiment of kind `ablate`; each run's `tags` (mode, rung, ingredient) say where it sits. The table
and the waterfall are computed from those rows only (`ablation_table`), like the before/after table.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness import tables as rep
from harness.datasets import DataSpec, check_spec, train_images
from harness.errors import UserError, close_matches
from harness.experiment import Reported, Where, run_experiment
from harness.models import check_weights, get_model_entry, resolve_scale, stand_in_label, weights_tag
from harness.recipes import INGREDIENTS, Budget, Recipe, resolve_recipe
from harness.specs import RunSpec, pretrained_fields

if TYPE_CHECKING:
    from harness.engine import Trials

DEFAULT_EPOCHS = 6  # 11 vit_tiny rungs of 6 epochs fit in 10 minutes on 2 cores (README)


@dataclass(frozen=True)
class Rung:
    mode: str  # add | drop
    index: int  # 0 = the ladder's start (naive for add, the full recipe for drop)
    ingredient: str | None  # what this rung adds (add) or removes (drop); None at the start
    recipe: Recipe


@dataclass(frozen=True)
class Ablation:
    model: str  # what runs
    stands_for: str | None
    start: Recipe  # naive at the budget's batch
    end: Recipe  # the model's recipe, fitted
    steps: tuple[str, ...]
    mode: str
    rungs: tuple[Rung, ...]
    runs: tuple[RunSpec, ...]
    flags: str  # the flags that make this ladder again (`harness ablate FLAGS`): a resume rebuilds it from them

    def describe(self) -> list[str]:
        first = self.runs[0]
        label = stand_in_label(self.model, self.stands_for)
        lines = [f"ablate: {label}, {self.start.label()} -> {self.end.label()}, mode {self.mode}, "
                 f"{len({r.seed for r in self.runs})} seed(s), {len(self.runs)} runs",
                 f"budget: {first.epochs} epochs x {first.train_images} images of {first.data.name} at "
                 f"{first.data.image_size} px, batch {self.end.batch_size} ({first.updates()} updates per run)",
                 f"order: {', '.join(self.steps)}"]
        for ingredient in self.steps:
            fields = ", ".join(f"{f} {_show(getattr(self.start, f))}->{_show(getattr(self.end, f))}"
                               for f in INGREDIENTS[ingredient] if getattr(self.start, f) != getattr(self.end, f))
            lines.append(f"  {ingredient:<13} {fields}")
        return lines


def _show(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def changed(start: Recipe, end: Recipe) -> list[str]:
    """The ingredients whose fields differ between the two recipes, in INGREDIENTS order."""
    return [name for name, fields in INGREDIENTS.items() if any(getattr(start, f) != getattr(end, f) for f in fields)]


def _take(recipe: Recipe, source: Recipe, ingredient: str, name: str) -> Recipe:
    """`recipe` with the fields of `ingredient` taken from `source`."""
    return recipe.model_copy(update={**{f: getattr(source, f) for f in INGREDIENTS[ingredient]}, "name": name})


def ladder(start: Recipe, end: Recipe, steps: list[str], mode: str) -> list[Rung]:
    out: list[Rung] = []
    if mode in ("add", "both"):
        current = start.model_copy(update={"name": "naive"})
        out.append(Rung("add", 0, None, current))
        for i, ingredient in enumerate(steps, start=1):
            current = _take(current, end, ingredient, f"add{i} +{ingredient}")
            out.append(Rung("add", i, ingredient, current))
    if mode in ("drop", "both"):
        out.append(Rung("drop", 0, None, end.model_copy(update={"name": f"{end.name} full"})))
        for i, ingredient in enumerate(steps, start=1):
            out.append(Rung("drop", i, ingredient, _take(end, start, ingredient, f"drop{i} -{ingredient}")))
    return out


def parse_steps(text: str | None, available: list[str], end: Recipe) -> list[str]:
    if text is None:
        return available
    steps = [s.strip() for s in text.split(",") if s.strip()]
    if not steps:
        raise UserError("--steps", text, "List at least one ingredient, comma-separated, e.g. --steps optimizer,lr,warmup.")
    for s in steps:
        if s not in INGREDIENTS:
            raise UserError("--steps", s, "Unknown ingredient. " + close_matches(s, INGREDIENTS))
        if s not in available:
            same = ", ".join(f"{f}={_show(getattr(end, f))}" for f in INGREDIENTS[s])
            raise UserError("--steps", s, f"{end.label()} does not change {s}: its fields equal naive's ({same}). "
                            f"Ingredients it changes: {', '.join(available)}.")
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    if repeated:
        raise UserError("--steps", text, f"{', '.join(repeated)} is listed twice; name each ingredient once.")
    return steps


def resolve_ablation(model: str, *, recipe: str = "fitted", steps: str | None = None, mode: str = "add", seeds: int = 1,
                     epochs: int = DEFAULT_EPOCHS, batch_size: int = 64, data: DataSpec = DataSpec(image_size=16),
                     scale: str = "auto", cuda: bool = False, threads: int | None = 1,
                     pretrained: Any = None) -> Ablation:
    """Everything resolved and checked before anything runs (UserError on bad input; the bounds of seeds,
    epochs, batch size and mode are the CLI's click types). `pretrained` ('timm'
    or {model: path}): every rung starts from those weights, and 'fitted' is the family's fine-tuning recipe,
    so layer decay, warmup and the schedule each get their measured share."""
    entry = get_model_entry(model, "--model")
    check_spec(data, "--data")
    ran, _ = resolve_scale(model, scale, cuda=cuda)
    get_model_entry(ran).size_kwargs(data.image_size)
    budget = Budget(epochs, train_images(data), batch_size)
    weights = pretrained_fields(pretrained, ran, model if ran != model else None, "--pretrained-file")
    fine_tuning = bool(weights)
    start = resolve_recipe("naive", family=entry.family, pretrained=fine_tuning, budget=budget, field="--recipe")
    end = resolve_recipe(recipe, family=entry.family, pretrained=fine_tuning, budget=budget, field="--recipe")
    available = changed(start, end)
    if not available:
        raise UserError("--recipe", recipe, "This recipe equals naive at this budget: nothing to ablate.")
    order = parse_steps(steps, available, end)
    rungs = ladder(start, end, order, mode)
    given = [("--model", model), ("--recipe", recipe), ("--mode", mode), ("--steps", ",".join(order)), ("--seeds", seeds),
             ("--epochs", epochs), ("--batch-size", batch_size), ("--data", data.name), ("--image-size", data.image_size),
             ("--data-root", data.root), ("--train-size", data.train_size), ("--scale", None if scale == "auto" else scale)]
    if isinstance(pretrained, dict):
        given += [("--pretrained-file", f"{m}={p}") for m, p in pretrained.items()]
    flags = " ".join(f"{k} {shlex.quote(str(v))}" for k, v in given if v is not None) + (" --pretrained" if pretrained == "timm" else "")
    runs = tuple(
        RunSpec(model=ran, recipe=r.recipe, data=data, epochs=epochs, seed=seed, stands_for=model if ran != model else None,
                train_images=budget.train_images, threads=threads if not cuda else None, **weights,
                tags={"mode": r.mode, "rung": r.index, "ingredient": r.ingredient or "",
                      **({"weights": tag} if (tag := weights_tag(ran, pretrained=bool(weights.get("pretrained")),
                                                                  pretrained_file=weights.get("pretrained_file"))) else {})})
        for r in rungs for seed in range(seeds))
    return Ablation(ran, model if ran != model else None, start, end, tuple(order), mode, tuple(rungs), runs, flags)


def run_ablation(ab: Ablation, where: Where, *, concurrency: int = 2, echo: Callable[[str], None] = print,
                 resume: bool = False):
    """Run the ladder as an `ablate` experiment (`experiment.run_experiment`; with `resume`: continue
    the interrupted one of this model, which must be the same ladder), then its table, waterfall and
    the pages. Returns the engine's Outcome (status "interrupted": the CLI exits 130)."""
    return run_experiment(Ladder(ab, concurrency), where, resume=resume, echo=echo).outcome


@dataclass(frozen=True)
class Ladder:
    """`harness ablate` as an `experiment.Command`: the ladder's runs and its table.
    The trials ask for `gpu: auto`, as the benchmark's do: on a GPU machine they share its cards
    (`resources.share_cards`), so the full models `resolve_ablation` chose there train on the GPU."""

    ab: Ablation
    concurrency: int
    kind = "ablate"

    @property
    def name(self) -> str:
        return f"ablate {self.ab.stands_for or self.ab.model}"

    @property
    def description(self) -> str:
        return f"{self.ab.start.label()} -> {self.ab.end.label()}, one ingredient at a time ({self.ab.mode})"

    @property
    def again(self) -> str:
        return f"harness ablate {self.ab.flags}"

    def stored(self) -> dict[str, Any]:
        ab = self.ab
        return {"model": ab.model, "stands_for": ab.stands_for, "start": ab.start.label(), "end": ab.end.label(),
                "mode": ab.mode, "steps": list(ab.steps), "epochs": ab.runs[0].epochs, "seeds": len({r.seed for r in ab.runs}),
                "batch_size": ab.end.batch_size, "data": ab.runs[0].data.model_dump(mode="json"),
                "rungs": [f"{r.mode} {r.index}: {r.recipe.name}" for r in ab.rungs]}

    def spec_yaml(self) -> str:
        return yaml.safe_dump(self.stored(), sort_keys=False)

    def resumed(self, row: dict[str, Any], where: Where, echo: Callable[[str], None]) -> Ladder:
        """Only the same ladder continues: it is rebuilt from the flags, not from the row."""
        stored, spec = yaml.safe_load(row["spec"]), self.stored()
        if stored != spec:
            changed = sorted(k for k in spec if stored.get(k) != spec[k])
            raise UserError("--resume", self.name, f"The ladder asked for differs from the one started in {', '.join(changed)}; "
                            "pass the same flags to continue it, or run without --resume.")
        return self

    def check_new(self, where: Where) -> None:
        """As the benchmark's: a new ladder's weights (a resumed one starts from its checkpoints)."""
        check_weights(self.ab.runs[:1])  # a foreign file, or timm's weights out of reach: exit 2 before any row

    def describe(self) -> list[str]:
        return self.ab.describe()

    def trials(self, where: Where) -> Trials:
        from harness.engine import Trials
        from harness.specs import ResourcesSpec

        return Trials.grid(self.ab.runs, concurrency=self.concurrency, resources=ResourcesSpec(cpu=1))

    def report(self, where: Where, outcome: Any, echo: Callable[[str], None]) -> Reported:
        exp = outcome.experiment_id
        store = rep.open_reader(where.db)
        try:
            table = rep.ablation_table(store, exp)
        finally:
            store.close()
        echo("")
        echo(rep.to_text(rep.format_ablation(table)))
        if where.out is None:
            return Reported([])
        return Reported([f"table: {Path(where.out) / f'ablate-{exp}.md'} and .csv, waterfall {Path(where.out) / f'ablate-{exp}.html'}"])
