"""Named training recipes: data, not code paths, in two forms.

A `Recipe` (`recipe.py`) is every knob of a training run that is not the model or the data,
augmentation included. The named ones (`catalogue.py`) are the **published** form: the source's
values verbatim, in the source's units (its run length, its batch, its data), each next to its
citation. `fit_recipe()` (`fitting.py`) derives the **fitted** form for one run's budget (epochs x
training images at one batch size) by written rules, each with its source (`FIT_RULES`); every
table and page says which form ran, and `harness recipes show NAME` prints both, with the lr
actually used. `build.py` turns a recipe into timm objects.

A reference names a recipe and a form: 'vit' (fitted), 'vit@published', or the form alone,
'fitted' / 'published', for each model family's own recipe ('tuned' is accepted for 'fitted').

    recipe.py  <-  catalogue.py  <-  fitting.py        build.py, lr_axis.py (recipe.py only)
"""

from harness.recipes.build import build_loss, build_mixup, build_optimizer, build_scheduler
from harness.recipes.catalogue import FAMILY_RECIPES, INGREDIENTS, RECIPES, family_recipe_name, get_recipe, published_table, register
from harness.recipes.fitting import (
    ALIASES,
    FIT_RULES,
    FORMS,
    SECOND_MOMENT_DECAY,
    WARMUP_CAP,
    Budget,
    fit_recipe,
    named_recipe,
    parse_ref,
    resolve_recipe,
    with_overrides,
)
from harness.recipes.lr_axis import DEFAULT_LRS, LrPoint, at_lr, parse_lrs
from harness.recipes.recipe import (
    COMMON_OPTIMIZERS,
    IDENTITY,
    IMAGENET_1K_TRAIN,
    LR_RULES,
    RANDAUGMENT_FORMAT,
    TUNABLE,
    Recipe,
    randaugment_magnitude,
)

__all__ = ["ALIASES", "COMMON_OPTIMIZERS", "DEFAULT_LRS", "LrPoint", "at_lr", "parse_lrs",
           "FAMILY_RECIPES", "FIT_RULES", "FORMS", "IDENTITY", "IMAGENET_1K_TRAIN",
           "INGREDIENTS", "LR_RULES", "RANDAUGMENT_FORMAT", "RECIPES", "SECOND_MOMENT_DECAY", "TUNABLE", "WARMUP_CAP",
           "Budget", "Recipe", "build_loss", "build_mixup", "build_optimizer", "build_scheduler", "family_recipe_name",
           "fit_recipe", "get_recipe", "named_recipe", "parse_ref", "published_table", "randaugment_magnitude",
           "register", "resolve_recipe", "with_overrides"]
