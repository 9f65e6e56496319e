"""The answer as a recipe you can use: a whole `Recipe` as a YAML file, and as timm train.py flags.

A benchmark with an lr axis and a sweep each end with a winner; `write_recipe_file` hands it back as
a file that `harness train --recipe FILE` and a study's `recipe: FILE` accept (`load_recipe_file`,
`is_recipe_file`). The file holds every field of the recipe, fitted values and `fit_notes` included,
under `# ` lines saying what chose it; it is used as written (already fitted to a budget: never
refitted), so a run from it trains what the winner trained. `timm_train_flags` writes the same recipe
for timm's own `train.py`, with a note for what that script cannot express.

This module sits below `specs.py` (which imports it) and imports no torch, timm or Ray. It also holds
`read_yaml`, the harness's one YAML reader (specs.py re-exports it): a recipe file is read with the
same rules as a study, and specs.py importing this module forbids the other way round.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from harness.errors import UserError, close_matches
from harness.files import write_text_atomic
from harness.recipes import RECIPES, Recipe

MAX_YAML_BYTES = 256 * 1024
RECIPE_SUFFIXES = (".yaml", ".yml")


# --- YAML with the harness's rules ----------------------------------------------------------------

def read_yaml(path: Path, *, example: str = "see studies/vit_lr.yaml for a complete example",
              keys: str = "name:, model:, ...") -> dict[str, Any]:
    """A YAML mapping from `path`; refuses missing, huge, empty, aliased (bomb) and non-mapping files.
    `example` and `keys` word the fix for an empty file and for a top level that is not a mapping."""
    p = Path(path)
    if not p.is_file():
        raise UserError(str(path), None, "No such file. Check the path (studies ship in studies/, grids in benchmarks/).")
    if p.stat().st_size > MAX_YAML_BYTES:
        raise UserError(str(path), f"{p.stat().st_size} bytes",
                        f"File too large (limit {MAX_YAML_BYTES // 1024} KiB); a study is a few dozen lines.")
    text = p.read_text(errors="replace")
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                # Aliases are how a "billion laughs" file expands to gigabytes; studies need none.
                raise UserError(str(path), event.anchor, "YAML aliases (*name) are not allowed; write the values out.")
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(str(path), "not YAML", f"Fix the YAML syntax{where}: {getattr(e, 'problem', e)}.") from None
    if data is None:
        raise UserError(str(path), "empty file", f"The file is empty; {example}.")
    if not isinstance(data, dict):
        raise UserError(str(path), type(data).__name__, f"Expected a mapping of keys ({keys}) at the top level.")
    return data


# --- names that become paths -----------------------------------------------------------------------

# A study's name is a folder (<storage-path>/<name>-...) and an Optuna study; a recipe's name is part of
# the pages' file names (lr_range_<model>_<recipe>.html): no "/", "..", markup or 10 kB names there.
NAME_PATTERN = r"\w[\w.-]{0,99}"
NAME_RULE = "Use letters, digits, '_', '-' and '.' (at most 100, first a letter or digit)"


def path_name_ok(name: str) -> bool:
    return re.fullmatch(NAME_PATTERN, name) is not None


# --- the recipe file ------------------------------------------------------------------------------

def is_recipe_file(ref: str) -> bool:
    """Whether a recipe reference names a file rather than a registry recipe: it ends in .yaml/.yml
    or contains a path separator ('vit', 'vit@published' and 'fitted' are names)."""
    seps = {"/", os.sep, os.altsep} - {None}
    return ref.lower().endswith(RECIPE_SUFFIXES) or any(s in ref for s in seps)  # type: ignore[operator]


def recipe_yaml(recipe: Recipe, comment: Iterable[str] = ()) -> str:
    """The text `write_recipe_file` writes: `# ` comment lines, then every field in the model's order."""
    lines = [f"# {line}".rstrip() for text in comment for line in str(text).splitlines() or [""]]
    body = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=1_000_000)
    return "".join(f"{line}\n" for line in lines) + body


def write_recipe_file(recipe: Recipe, path: Path, *, comment: Iterable[str] = ()) -> Path:
    """Write the whole recipe (every field, `fit_notes` included, in the model's field order) as YAML
    to `path`, atomically, under one `# ` line per comment line (the caller says what chose it, on which
    split, and its test accuracy). The folder is created. `load_recipe_file` reads it back equal."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(path, recipe_yaml(recipe, comment))


def load_recipe_file(path: Path, field: str) -> Recipe:
    """The recipe in a file `write_recipe_file` wrote (or one written by hand: a field left out takes
    `Recipe`'s default). `field` is where the reference was given ('--recipe', or 'recipe' in a study);
    any problem is one UserError: the file's own under `field`, a key's under `field.key` (e.g.
    `recipe.lr`), with the value and the fix, the fix naming the file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(field, str(path), "No such recipe file (a relative path is from the current folder). Name a "
                        "file harness wrote (a benchmark's or sweep's recipes/recommended-*.yaml), or a recipe name: "
                        + ", ".join(RECIPES) + ", fitted.")
    try:
        data = read_yaml(p, example="a recipe file lists recipe fields (lr: 0.001, ...); "
                         "a benchmark with --lrs or a sweep writes complete ones", keys="name:, lr:, ...")
    except UserError as e:
        raise UserError(field, str(path), e.fix) from None
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        errs = e.errors()
        err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
        key = ".".join(str(part) for part in err["loc"])
        if err["type"] == "extra_forbidden":
            fix = "Unknown key. " + close_matches(str(err["loc"][-1]), Recipe.model_fields)
        else:
            msg = err["msg"].removeprefix("Value error, ")
            fix = f"{msg[:1].upper()}{msg[1:]}."
        raise UserError(f"{field}.{key}", err.get("input"), f"{fix} Fix it in {path}.") from None
    if not path_name_ok(recipe.name):  # the pages' file names carry it
        raise UserError(f"{field}.name", recipe.name, f"{NAME_RULE}, e.g. vit_lr. Fix it in {path}.")
    return recipe


# --- the same recipe for timm's train.py ---------------------------------------------------------

# train.py's defaults for the flags written below, read from huggingface/pytorch-image-models train.py
# (main, 2026): a flag is written only where the recipe differs from these (the first five always).
TIMM_DEFAULTS = {"--warmup-epochs": 5, "--warmup-lr": 1e-5, "--min-lr": 0.0, "--decay-rate": 0.1,
                 "--weight-decay": 2e-5, "--momentum": 0.9, "--smoothing": 0.1, "--hflip": 0.5,
                 "--scale": (0.08, 1.0), "--mixup-prob": 1.0}


def _num(v: float) -> str:
    return f"{v:.6g}"


def timm_train_flags(recipe: Recipe, *, epochs: int) -> str:
    """The recipe as flags of timm's `train.py` for a run of `epochs` epochs, as one line: the flags,
    then, where train.py cannot say what harness does, `  # note: ...; ...` (a shell ignores it).

    Always written: `--opt`, `--lr` (the absolute peak lr at the recipe's batch, `scaled_lr()`, so
    train.py's own lr-base scaling is off), `-b` (per process: on N GPUs give -b batch/N to keep the
    recipe's batch and lr), `--epochs`, `--sched` with `--sched-on-updates` (harness steps the lr every
    update). Every other flag only where its value differs from train.py's default (`TIMM_DEFAULTS`)
    or the ingredient is on; where harness does nothing and train.py does something by default, the
    flag that turns it off (`--smoothing 0`, `--hflip 0`, `--color-jitter 0`, `--no-aug`).
    The flags that take several values (`--opt-kwargs`, `--scale`, `--ratio`) are always followed by
    another flag, so a data folder may follow the line. Numbers have 6 significant digits."""
    r = recipe
    flags: list[str] = ["--opt", r.optimizer]
    notes: list[str] = []

    def put(flag: str, value: float, *, default: float | None = None) -> None:
        if default is None or value != default:
            flags.extend([flag, _num(value)])

    if not r.no_decay_norm_bias and r.weight_decay > 0:  # train.py passes --opt-kwargs to create_optimizer_v2
        flags += ["--opt-kwargs", "filter_bias_and_bn=False"]
    flags += ["--lr", _num(r.scaled_lr()), "-b", str(r.batch_size), "--epochs", str(epochs)]
    flags += ["--sched", r.schedule, "--sched-on-updates"]
    if r.schedule == "step":  # as recipes.build_scheduler: 0 = a third of the run
        put("--decay-epochs", r.decay_epochs or max(1.0, epochs / 3))
        put("--decay-rate", r.decay_rate, default=TIMM_DEFAULTS["--decay-rate"])
    warmup = math.floor(r.warmup_epochs + 0.5)  # train.py's --warmup-epochs is an int
    if warmup != r.warmup_epochs:
        notes.append(f"harness warms up for {r.warmup_epochs:g} epochs; train.py's --warmup-epochs takes whole "
                     f"epochs ({warmup} here)")
    if warmup != TIMM_DEFAULTS["--warmup-epochs"]:
        flags += ["--warmup-epochs", str(warmup)]
    if warmup > 0:
        put("--warmup-lr", r.warmup_lr, default=TIMM_DEFAULTS["--warmup-lr"])
    if r.schedule == "cosine":  # the step schedule has no floor, in harness as in timm
        put("--min-lr", r.min_lr, default=TIMM_DEFAULTS["--min-lr"])

    put("--weight-decay", r.weight_decay, default=TIMM_DEFAULTS["--weight-decay"])
    if r.opt_eps is not None:
        put("--opt-eps", r.opt_eps)
    put("--momentum", r.momentum, default=TIMM_DEFAULTS["--momentum"])
    if r.layer_decay is not None:
        put("--layer-decay", r.layer_decay)
    if r.grad_clip > 0:  # harness clips the global norm: train.py's --clip-mode norm, its default
        put("--clip-grad", r.grad_clip)

    put("--smoothing", r.label_smoothing, default=TIMM_DEFAULTS["--smoothing"])
    if r.loss == "bce":
        flags.append("--bce-loss")
        if not r.uses_mixup() and r.label_smoothing == 0:
            notes.append("bce loss without mixup or smoothing: train.py then uses cross-entropy")

    # Per-image augmentation. train.py always crops (random resized) and, without --aa, jitters colour.
    if r.crop == "none" and r.hflip == 0 and not r.randaugment and r.random_erasing == 0:
        flags.append("--no-aug")
    else:
        if r.crop == "rrc":
            if r.crop_scale != TIMM_DEFAULTS["--scale"][0]:
                flags += ["--scale", _num(r.crop_scale), "1"]
        else:  # the whole (square) image: a random resized crop of all of it at aspect 1
            flags += ["--scale", "1", "1", "--ratio", "1", "1"]
            if r.crop == "pad":
                notes.append(f"crop=pad (a random crop of the image padded by {r.crop_pad:g} of its side, "
                             f"{r.crop_pad_mode}) has no train.py flag: here the whole image, uncropped")
        put("--hflip", r.hflip, default=TIMM_DEFAULTS["--hflip"])
        if r.randaugment:
            flags += ["--aa", r.randaugment]  # timm turns its colour jitter off under RandAugment
        else:
            flags += ["--color-jitter", "0"]
        if r.random_erasing > 0:  # harness's pixel mode is train.py's --remode default
            put("--reprob", r.random_erasing)

    if r.uses_mixup():
        if r.mixup_alpha > 0:
            put("--mixup", r.mixup_alpha)
        if r.cutmix_alpha > 0:
            put("--cutmix", r.cutmix_alpha)
        put("--mixup-prob", r.mixup_prob, default=TIMM_DEFAULTS["--mixup-prob"])
    if r.drop_path_rate > 0:
        put("--drop-path", r.drop_path_rate)
    if r.drop_rate > 0:
        put("--drop", r.drop_rate)
    if r.ema_decay is not None:  # harness's ModelEmaV3 warms its decay up, as --model-ema-warmup does
        flags += ["--model-ema", "--model-ema-decay", _num(r.ema_decay), "--model-ema-warmup"]
    if r.pretrained:
        notes.append("a fine-tuning recipe: start from pretrained weights (--pretrained or --initial-checkpoint)")
    line = " ".join(flags)
    return f"{line}  # note: {'; '.join(notes)}" if notes else line


__all__ = ["read_yaml", "is_recipe_file", "recipe_yaml", "write_recipe_file", "load_recipe_file", "timm_train_flags",
           "TIMM_DEFAULTS", "MAX_YAML_BYTES"]
