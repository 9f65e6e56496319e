"""The learning-rate axis of a grid (`harness benchmark --lrs`): its points, read once, and a recipe
moved to one of them (`at_lr`). Recipe operations: `specs.resolve_run` applies a point while it fits
the recipe, so a run's lr is settled in one place."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from harness.errors import UserError
from harness.recipes.recipe import Recipe

# `lrs: default`: two decades in half-decade steps around each recipe's own (fitted) lr. Relative, not
# absolute: the recipes' optimizers live on different scales (Adam 1e-3, LAMB 1.4e-3 and RMSprop 4e-3
# at batch 64, SGD ~0.1), so one absolute grid would sit off-centre for some of them; x1 is the point
# the source prescribes, and the window says whether it trains. Half-decade steps are the spacing of
# Wortsman et al.'s grids (ICLR 2024, sec. 2.2: 3e-4, 1e-3, 3e-3, ...); a best at either end of the
# grid is flagged, so a window cut off by the grid is never mistaken for the whole.
DEFAULT_LRS = ("x0.1", "x0.3", "x1", "x3", "x10")
LR_FIX = "Write multipliers of each recipe's own lr (x0.1,x1,x10), absolute lrs at the run's batch (1e-4,3e-4) or default."


@dataclass(frozen=True)
class LrPoint:
    """One point of an lr axis: a multiplier of the recipe's own lr (`mult`) or an absolute lr (`lr`)."""

    label: str  # as written back: 'x0.3' or '0.0003'
    mult: float | None = None
    lr: float | None = None

    def factor(self, own_lr: float) -> float:
        """What the recipe's own lr (at the run's batch) is multiplied by at this point."""
        return self.mult if self.mult is not None else self.lr / own_lr  # type: ignore[operator]


def parse_lrs(value: Any, field: str) -> tuple[LrPoint, ...]:
    """`--lrs` / `lrs:` -> the axis. Refuses a zero, negative, non-number or repeated value, and a mix
    of multipliers and absolute lrs (one axis, one kind), naming the value and the fix."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    items = [str(v).strip() for v in items if str(v).strip()]
    if items == ["default"]:
        items = list(DEFAULT_LRS)
    if not items:
        raise UserError(field, value, f"Give at least one lr. {LR_FIX}")
    points: list[LrPoint] = []
    for item in items:
        relative = item.lower().startswith("x")
        try:
            number = float(item[1:] if relative else item)
        except ValueError:
            raise UserError(field, item, f"Not a learning rate. {LR_FIX}") from None
        if not math.isfinite(number) or number <= 0:
            raise UserError(field, item, f"A learning rate (or multiplier) must be a positive number. {LR_FIX}")
        point = LrPoint(f"x{number:.12g}", mult=number) if relative else LrPoint(f"{number:.12g}", lr=number)
        if point.label in {p.label for p in points}:
            raise UserError(field, item, f"{point.label} is listed twice; list each lr once.")
        points.append(point)
    if len({p.mult is None for p in points}) > 1:
        raise UserError(field, ",".join(items), "Multipliers and absolute lrs are mixed; use one kind per axis "
                        "(x0.1,x1,x10 around each recipe's own lr, or 1e-4,3e-4,1e-3 for every recipe).")
    return tuple(sorted(points, key=lambda p: p.mult if p.mult is not None else p.lr))  # type: ignore[arg-type,return-value]


def at_lr(recipe: Recipe, point: LrPoint) -> tuple[Recipe, dict[str, Any]]:
    """`recipe` at one point of the lr axis: its whole lr schedule (peak, cosine floor, warmup start)
    multiplied by one factor, so the schedule keeps the recipe's shape at every point (a floor left
    at the recipe's value would sit above a lowered peak). Also the tags that record where the run
    sits (its row's params.tags: the point, the factor, the lr it trains at and its own)."""
    own = recipe.scaled_lr()
    f = point.factor(own)
    moved = recipe.model_copy(update={"lr": recipe.lr * f, "min_lr": recipe.min_lr * f, "warmup_lr": recipe.warmup_lr * f})
    return moved, {"lr_point": point.label, "lr_mult": f, "lr": moved.scaled_lr(), "own_lr": own}
