"""Fitting a published recipe to one run's budget (epochs x training images at one batch size) by
the written rules in `FIT_RULES`, each with its source; and resolving a user's reference
('vit', 'vit@published', 'fitted', a family's own) to the recipe a run trains with."""

from __future__ import annotations

import re
from dataclasses import dataclass

from harness.errors import UserError, unknown
from harness.recipes.catalogue import RECIPES, family_recipe_name, get_recipe
from harness.recipes.recipe import TUNABLE, Recipe, randaugment_magnitude

# --- fitting a published recipe to one run -----------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """What one run can spend: its epochs over `train_images` at `batch_size` images per update."""

    epochs: int
    train_images: int
    batch_size: int

    @property
    def steps_per_epoch(self) -> int:  # as train.build_training steps: full batches only
        return max(1, self.train_images // min(self.batch_size, self.train_images))

    @property
    def updates(self) -> int:
        return self.epochs * self.steps_per_epoch


# Adam-type optimizers' second-moment decay (timm's defaults), for the warmup floor below.
SECOND_MOMENT_DECAY = {"adam": 0.999, "adamw": 0.999, "nadam": 0.999, "nadamw": 0.999, "radam": 0.999,
                       "lamb": 0.999, "lambc": 0.999, "rmsprop": 0.9, "rmsproptf": 0.9}
WARMUP_CAP = 0.1  # the floor never takes more than this share of the run's updates (harness choice)

# The written rules fit_recipe() applies; `harness recipes show` prints them and the README cites them.
FIT_RULES = {
    "lr": "the source's own batch rule (lr_rule) at this run's batch; linear for SGD/AdamW/RMSprop as DeiT, "
          "Swin, MAE and timm state, sqrt for LAMB (You et al. arXiv 1904.00962).",
    "warmup": "the source's share of its run (DeiT 5/300, Swin 20/300, RSB A3 5/100 epochs) over this run's "
              "updates, floored at 2/(1-beta2) updates for Adam-type optimizers (Ma & Yarats, arXiv 1910.04209: "
              "untuned warmup) but never more than a tenth of the run (harness choice).",
    "step decay": "the same number of decays over the run as the source (decay_epochs x run / source epochs).",
    "ema": "the EMA's averaging window 1/(1-decay) as the same share of the run's updates as in the source; "
           "off when that window is under 2 updates.",
    "strength": "augmentation and regularisation strength x s, s = min(1, run epochs / source epochs): mixup "
                "and cutmix alpha, RandAugment magnitude (off when it rounds to 0: its magnitude-free ops would "
                "still fire), random erasing, drop path, dropout, and the crop (rrc: 1 - s(1 - min area); pad: "
                "padding x s). Steiner et al. arXiv 2106.10270: augmentation and regularisation hurt at small "
                "compute; RSB A3 (100 epochs) is lighter than A1 (600). Flip, label smoothing and weight decay "
                "stay as published.",
}


def _round(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def fit_recipe(recipe: Recipe, budget: Budget) -> Recipe:
    """The fitted form of a published recipe for `budget` (see FIT_RULES). Each changed value is
    explained in `fit_notes`. A recipe without a source run only takes the budget's batch size."""
    if recipe.form == "fitted":
        raise ValueError(f"recipe {recipe.name} is already fitted")
    at_batch = recipe.model_copy(update={"batch_size": budget.batch_size})
    notes = [f"batch {budget.batch_size}: {budget.steps_per_epoch} updates/epoch x {budget.epochs} epochs = "
             f"{budget.updates} updates",
             f"lr {recipe.lr:g} per {recipe.lr_base_batch} -> {at_batch.scaled_lr():.3g} at batch {budget.batch_size} "
             f"({recipe.lr_rule} rule)"]
    update: dict[str, object] = {"form": "fitted", "batch_size": budget.batch_size}
    if recipe.source_epochs is None:
        notes.append("no source run: schedule, augmentation and regularisation as stated")
        return Recipe.model_validate({**recipe.model_dump(), **update, "fit_notes": tuple(notes)})
    run, src = budget.updates, recipe.source_epochs
    spe = budget.steps_per_epoch

    if recipe.warmup_epochs > 0:
        share = recipe.warmup_epochs / src
        beta2 = SECOND_MOMENT_DECAY.get(recipe.optimizer)
        floor = min(2 / (1 - beta2), WARMUP_CAP * run) if beta2 else 0.0
        updates = max(1, round(max(share * run, floor)))
        update["warmup_epochs"] = _round(updates / spe)
        notes.append(f"warmup {recipe.warmup_epochs:g} of {src:g} epochs ({share:.1%}) -> {updates} of {run} updates"
                     + (f" (floor min(2/(1-{beta2:g}), {WARMUP_CAP:.0%} of the run))" if floor > share * run else ""))
    if recipe.schedule == "step" and recipe.decay_epochs > 0:
        update["decay_epochs"] = _round(recipe.decay_epochs * budget.epochs / src)
        notes.append(f"step decay every {recipe.decay_epochs:g} of {src:g} epochs -> every {update['decay_epochs']:g} "
                     f"of {budget.epochs} ({src / recipe.decay_epochs:.0f} decays either way)")
    if recipe.ema_decay is not None:
        src_updates = src * recipe.source_images / (recipe.source_batch or recipe.lr_base_batch)
        window = (1 / (1 - recipe.ema_decay)) * run / src_updates
        update["ema_decay"] = _round(1 - 1 / window) if window >= 2 else None
        notes.append(f"EMA {recipe.ema_decay:g} (window {1 / (1 - recipe.ema_decay):.0f} of {src_updates:.0f} updates) -> "
                     + (f"{update['ema_decay']:g} (window {window:.1f} of {run})" if window >= 2 else
                        f"off (window {window:.2f} updates)"))

    s = min(1.0, budget.epochs / src)
    scaled = []
    for key in ("mixup_alpha", "cutmix_alpha", "random_erasing", "drop_path_rate", "drop_rate"):
        value = getattr(recipe, key)
        if value:
            update[key] = _round(value * s)
            scaled.append(f"{key} {value:g}->{update[key]:g}")
    if recipe.randaugment:
        m = randaugment_magnitude(recipe.randaugment)
        m_fit = round(m * s)
        update["randaugment"] = (re.sub(r"-m[0-9.]+", f"-m{m_fit}", recipe.randaugment) if "-m" in recipe.randaugment
                                 else f"{recipe.randaugment}-m{m_fit}") if m_fit > 0 else None
        scaled.append(f"randaugment {recipe.randaugment}->{update['randaugment'] or 'off'}")
    if recipe.crop == "rrc":
        update["crop_scale"] = _round(1 - s * (1 - recipe.crop_scale))
        scaled.append(f"crop min area {recipe.crop_scale:g}->{update['crop_scale']:g}")
    elif recipe.crop == "pad":
        update["crop_pad"] = _round(recipe.crop_pad * s)
        scaled.append(f"crop pad {recipe.crop_pad:g}->{update['crop_pad']:g}")
    if scaled:
        notes.append(f"strength x {s:.3g} ({budget.epochs} of {src:g} epochs): " + ", ".join(scaled))
    return Recipe.model_validate({**recipe.model_dump(), **update, "fit_notes": tuple(notes)})


FORMS = ("published", "fitted")
# The model family's own recipe is asked for by its form alone: 'fitted' (the default everywhere) or
# 'published'. 'tuned' is the older word for 'fitted', still accepted.
ALIASES = {"tuned": "fitted"}


def parse_ref(ref: str, field: str = "recipe") -> tuple[str | None, str]:
    """'vit' / 'vit@published' / 'fitted' / 'published' -> (recipe name, or None for the model family's
    own; form). A bare name means its fitted form."""
    name, _, form = ref.partition("@")
    name = ALIASES.get(name, name)
    if name in FORMS:
        if form and name != "fitted":
            raise UserError(field, ref, "Use NAME@published, or published alone for each model's own recipe.")
        return None, form or name
    form = form or "fitted"
    if form not in FORMS:
        raise UserError(field, ref, f"Unknown form {form!r}; use NAME@published or NAME@fitted (a bare name is fitted).")
    if name not in RECIPES:
        raise unknown(field, name, [*RECIPES, *FORMS])
    return name, form


def named_recipe(ref: str, *, family: str, pretrained: bool, field: str = "recipe") -> Recipe:
    """The published recipe a reference names: its own, or (None) the family's (fine-tuning one with weights)."""
    name, _ = parse_ref(ref, field)
    return get_recipe(name or family_recipe_name(family, pretrained), field)


def resolve_recipe(ref: str, *, family: str, pretrained: bool, budget: Budget, overrides: dict[str, object] | None = None,
                   field: str = "recipe", set_field: str = "--set") -> Recipe:
    """A recipe reference resolved for one run: the named recipe in the asked form, then the user's overrides.
    `batch_size` in the overrides is the budget's batch (fitting needs it); the rest apply after fitting."""
    _, form = parse_ref(ref, field)
    recipe = named_recipe(ref, family=family, pretrained=pretrained, field=field)
    overrides = dict(overrides or {})
    if "batch_size" in overrides:
        batch = with_overrides(recipe, {"batch_size": overrides.pop("batch_size")}, set_field).batch_size
        budget = Budget(budget.epochs, budget.train_images, batch)
    if form == "fitted":
        recipe = fit_recipe(recipe, budget)
    else:
        recipe = recipe.model_copy(update={"batch_size": budget.batch_size})
    return with_overrides(recipe, overrides, set_field)


def with_overrides(recipe: Recipe, overrides: dict[str, object], field: str = "--set") -> Recipe:
    """A copy of `recipe` with fields replaced, validated (bad key or value -> UserError)."""
    from pydantic import ValidationError

    sep = " " if field.startswith("--") else "."  # `--set lr` on the command line, `fixed.lr` in a file
    for key in overrides:
        if key not in TUNABLE:
            raise unknown(f"{field}{sep}{key}", key, TUNABLE)
    try:
        return Recipe.model_validate({**recipe.model_dump(), **overrides})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise UserError(f"{field}{sep}{key}", err.get("input"), f"{msg[:1].upper()}{msg[1:]}.") from None
