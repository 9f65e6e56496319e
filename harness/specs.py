"""Typed specs for a run, a study and a benchmark, resolved once at the edge.

YAML and CLI input becomes these pydantic objects before anything starts; every error carries
the path of the field (`search.lr.low`), the value received and the fix, as a `UserError`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from harness import plugins
from harness.datasets import DataSpec, check_spec, train_images
from harness.errors import UserError, close_matches, unknown
from harness.models import ModelName, declared_family, get_model_entry, weights_tag
from harness.recipe_file import (  # noqa: F401 (MAX_YAML_BYTES re-exported)
    MAX_YAML_BYTES,
    NAME_RULE,
    is_recipe_file,
    load_recipe_file,
    path_name_ok,
    read_yaml,
)
from harness.recipes import (
    TUNABLE,
    Budget,
    LrPoint,
    Recipe,
    at_lr,
    get_recipe,
    named_recipe,
    parse_lrs,
    parse_ref,
    resolve_recipe,
    with_overrides,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _model_ref(v: Any) -> ModelName:
    """A model as a grid or study names it: a name, or {name: NAME, family: FAMILY} for a timm model whose
    recipe family harness cannot tell from its module (docs/models.md). The family travels with the name."""
    if isinstance(v, ModelName):
        return v
    if isinstance(v, str) and v.strip():
        return ModelName(v.strip(), declared_family(v.strip()))  # --family given for it, if any
    if isinstance(v, dict) and set(v) <= {"name", "family"} and isinstance(v.get("name"), str) and v["name"].strip():
        family = v.get("family")
        if family is not None and not isinstance(family, str):
            raise ValueError(f"family must be a name (vit, swin, resnet, efficientnet), got {family!r}")
        return ModelName(v["name"].strip(), family)
    raise ValueError("a model is a name (convnext_tiny) or {name: NAME, family: FAMILY} (family one of "
                     "resnet, efficientnet, vit, swin)")


def _model_dump(v: Any) -> Any:
    family = getattr(v, "family", None)
    return {"name": str(v), "family": family} if family else str(v)


# A model field of a grid or study: a name or {name, family}, kept as a `ModelName` (a str with its family).
ModelRef = Annotated[str, PlainValidator(_model_ref), PlainSerializer(_model_dump)]


# A run's epochs, bounded once: RunSpec's and a grid's field, and the --epochs options (`options.EPOCHS`
# reads the bound from here, `least`).
Epochs = Annotated[int, Field(ge=1, description="epochs every run trains")]


def least(bounded: Any) -> int:
    """The `ge=` bound of an `Annotated[int, Field(ge=...)]` type."""
    return next(m.ge for f in bounded.__metadata__ for m in getattr(f, "metadata", ()) if hasattr(m, "ge"))


class RunSpec(Strict):
    """Everything one training run needs; `fit()` takes nothing else."""

    model: str
    recipe: Recipe
    data: DataSpec = DataSpec()
    epochs: Epochs = 10
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    amp: bool = Field(True, description="bf16 autocast on CUDA (ignored on CPU, where bf16 is slower)")
    compile: bool = Field(False, description="torch.compile the model (once per run; reused every epoch)")
    channels_last: bool | None = Field(None, description="None = where faster: CNNs on CUDA, efficientnet on the CPU")
    pretrained: bool = False
    pretrained_file: Path | None = None
    checkpoint_dir: Path | None = Field(None, description="None = no checkpoints")
    checkpoint_every: int = Field(0, ge=0, description="also keep epoch_N.pt every N epochs; 0 = only last and best")
    max_hours: float | None = Field(None, gt=0, description="stop (with a checkpoint) after this much wall time")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch's default")
    eval_samples: int = Field(36, ge=0, description="validation images kept with their predictions")
    stands_for: str | None = Field(None, description="the full model this CPU stand-in replaces, for labels")
    train_images: int | None = Field(None, ge=1, description="training images per epoch (the budget the recipe was fitted to)")
    tags: dict[str, str | int | float] = Field(default_factory=dict, description=(
        "where the run sits in a grid (ablate: mode, rung, ingredient; an lr axis: lr_point, lr_mult, lr, own_lr)"))
    plugins: tuple[str, ...] = Field(default_factory=plugins.active, description=(
        "plugin modules/files loaded when the spec was made; a worker or a resume loads them again"))

    def label(self) -> str:
        """What ran, honestly: 'vit_tiny (CPU stand-in for vit_base)'."""
        from harness.models import stand_in_label

        return stand_in_label(self.model, self.stands_for)

    def updates(self) -> int | None:
        """Optimizer updates over the whole run (full batches only, as the loop steps)."""
        if self.train_images is None:
            return None
        return Budget(self.epochs, self.train_images, self.recipe.batch_size).updates


def resolve_run(*, model: str, recipe: str, data: DataSpec, overrides: dict[str, Any] | None = None,
                batch_size: int | None = None, recipe_field: str = "--recipe", n_train: int | None = None,
                lr_point: LrPoint | None = None, **fields: Any) -> RunSpec:
    """Check names and values, fit the recipe to the run (unless `NAME@published`), apply the
    overrides, return the typed spec. `batch_size` None = the recipe's own. Raises UserError.
    `n_train`: the data's training images when the caller counted them once for many runs (a grid over
    an image folder would otherwise list it once per run). `lr_point`: a point of a grid's lr axis, applied
to the fitted recipe (`recipes.at_lr`: the whole schedule moved) and recorded in the run's tags.

    A recipe FILE (`recipe_file.is_recipe_file`: a benchmark's or sweep's recommended recipe) is used
    as written, already fitted: no refit; `batch_size` replaces its batch (its own `lr_rule` and
    `lr_base_batch` rescale the lr), then the overrides apply. Its `pretrained` field loads no weights."""
    entry = get_model_entry(model, "--model")
    pretrained = bool(fields.get("pretrained") or fields.get("pretrained_file"))
    from_file = is_recipe_file(recipe)
    if from_file:
        base = load_recipe_file(Path(recipe), recipe_field)
    else:
        base = named_recipe(recipe, family=entry.family, pretrained=pretrained, field=recipe_field)
    check_spec(data)
    entry.size_kwargs(data.image_size)
    epochs = fields.get("epochs", RunSpec.model_fields["epochs"].default)
    if not isinstance(epochs, int) or epochs < least(Epochs):  # before a recipe is fitted to a budget of `epochs`
        raise UserError("--epochs", epochs, f"Train at least {least(Epochs)} epoch, e.g. --epochs 10.")
    n = n_train if n_train is not None else train_images(data)
    if from_file:
        if batch_size is not None:
            if batch_size < 1:
                raise UserError("--batch-size", batch_size, "Use at least 1 image per step, e.g. --batch-size 64.")
            base = base.model_copy(update={"batch_size": batch_size})
        resolved = with_overrides(base, overrides or {})
    else:
        budget = Budget(epochs, n, batch_size or base.batch_size)
        resolved = resolve_recipe(recipe, family=entry.family, pretrained=pretrained, budget=budget,
                                  overrides=overrides, field=recipe_field)
    if lr_point is not None:
        resolved, sits = at_lr(resolved, lr_point)
        fields["tags"] = {**fields.get("tags", {}), **sits}
    weights = weights_tag(model, pretrained=bool(fields.get("pretrained")), pretrained_file=fields.get("pretrained_file"))
    if weights is not None:  # which weights the run started from, in its row (params.tags)
        fields["tags"] = {**fields.get("tags", {}), "weights": weights}
    if entry.by_name:  # a timm model by name: which recipe family it got and why, in its row (params.tags)
        fields["tags"] = {**fields.get("tags", {}), "family": entry.family, "family_why": entry.why}
    try:
        return RunSpec(model=model, recipe=resolved, data=data, train_images=n, **fields)
    except ValidationError as e:
        raise _user_error(e, RunSpec, prefix="--") from None


# --- studies and benchmarks -----------------------------------------------------------------------

Pretrained = Literal["timm"] | dict[str, Path] | None
PRETRAINED_HELP = ("the weights every run starts from: null = a fresh init; timm = timm's own (from the local Hugging Face "
                   "cache); {model: FILE} = a state dict per model (a CPU stand-in's own name, or the model it stands "
                   "for). With weights, 'fitted' (each model's own recipe) is the family's fine-tuning one (*_ft)")


def pretrained_fields(pretrained: Pretrained, model: str, stands_for: str | None, field: str) -> dict[str, Any]:
    """`pretrained`/`pretrained_file` of one run of `model` (the model that runs; `stands_for`: the one it
    replaces) from a grid's or study's `pretrained:`. A file is named per model; a file for another model
    of the grid is not this one's."""
    if pretrained is None:
        return {}
    if pretrained == "timm":
        return {"pretrained": True}
    path = pretrained.get(model) or (pretrained.get(stands_for) if stands_for else None)
    if path is None:
        raise UserError(f"{field}", sorted(pretrained), f"no weights file for {model}"
                        + (f" (or {stands_for}, which it stands for)" if stands_for else "")
                        + f"; add `{model}: PATH`, or use `timm` for timm's own weights.")
    return {"pretrained_file": Path(path).expanduser().resolve()}  # trials run in workers elsewhere



class ParamSpec(Strict):
    type: Literal["uniform", "loguniform", "int", "logint", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.type == "choice":
            if not self.values:
                raise ValueError("values: a choice needs a non-empty list, e.g. values: [adam, adamw]")
            if self.low is not None or self.high is not None:
                raise ValueError("low/high: a choice takes only values")
            return self
        if self.values is not None:
            raise ValueError(f"values: only a choice takes values; a {self.type} takes low and high")
        if self.low is None or self.high is None:
            raise ValueError(f"low/high: a {self.type} parameter needs both, e.g. {{type: {self.type}, low: 1, high: 10}}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError("low/high must be finite numbers")
        if self.low > self.high:
            raise ValueError(f"low: {self.low} is greater than high {self.high}; swap them")
        if self.type.startswith("log") and self.low <= 0:
            raise ValueError(f"low: a log scale needs low > 0, got {self.low}; use e.g. 1e-5, or type: uniform")
        if self.type in ("int", "logint") and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"low/high: an int parameter needs whole numbers, got {self.low}..{self.high}")
        return self


class SamplerSpec(Strict):
    type: Literal["tpe", "random", "cmaes", "gp", "grid"] = "tpe"
    seed: int | None = 0


class SchedulerSpec(Strict):
    type: Literal["asha", "none"] = "asha"
    max_epochs: int = Field(10, ge=1, description="epochs a trial trains if not stopped")
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial may be stopped")
    reduction_factor: float = Field(3, gt=1)

    @model_validator(mode="after")
    def _grace(self) -> SchedulerSpec:
        if self.grace_period > self.max_epochs:
            raise ValueError(f"grace_period: {self.grace_period} is more than max_epochs {self.max_epochs}; "
                             f"use at most {self.max_epochs}")
        return self


class ResourcesSpec(Strict):
    cpu: float = Field(1, gt=0, description="CPU cores per trial")
    gpu: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="GPUs per trial: auto (the machine's cards shared among the concurrent trials, 0 without "
                            "a GPU: resources.share_cards), a number, or a fraction to pack small trials on one card")


class StudySpec(Strict):
    name: str = Field(min_length=1)  # see _name
    description: str = Field("", max_length=20000)
    model: ModelRef = Field(description="a registry or timm name, or {name: NAME, family: FAMILY} (docs/models.md)")
    recipe: str = Field(description="a recipe name (fitted to a trial's budget), or a recipe FILE.yaml (used as written)")
    data: DataSpec = DataSpec()
    metric: Literal["val_acc", "val_loss", "train_loss", "train_acc"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    search: dict[str, ParamSpec] = Field(min_length=1)
    fixed: dict[str, Any] = Field(default_factory=dict, description="recipe overrides shared by every trial")
    sampler: SamplerSpec = SamplerSpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    trials: int = Field(ge=1)
    concurrency: int = Field(1, ge=1)
    resources: ResourcesSpec = ResourcesSpec()
    seed: int = 0
    pretrained: Pretrained = Field(None, description=PRETRAINED_HELP)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # The name is also a folder (<storage-path>/<name>) and the Optuna study name (recipe_file.NAME_RULE).
        if not path_name_ok(v):
            raise ValueError(f"{NAME_RULE}, e.g. vit_lr; free text goes in description")
        return v

    def base_recipe(self) -> Recipe:
        """The study's recipe fitted to one trial's budget (max_epochs), with `fixed:` applied. A recipe
        file is used as written (already fitted; a relative path is from the current folder)."""
        if is_recipe_file(self.recipe):
            return with_overrides(load_recipe_file(Path(self.recipe), "recipe"), self.fixed, "fixed")
        family = get_model_entry(self.model, "model").family
        pretrained = self.pretrained is not None
        base = named_recipe(self.recipe, family=family, pretrained=pretrained)
        batch = self.fixed.get("batch_size", base.batch_size)
        budget = Budget(self.scheduler.max_epochs, train_images(self.data), batch if isinstance(batch, int) else base.batch_size)
        return resolve_recipe(self.recipe, family=family, pretrained=pretrained, budget=budget, overrides=self.fixed,
                              field="recipe", set_field="fixed")


class BenchmarkSpec(Strict):
    name: str = Field("naive_vs_recipe", min_length=1, max_length=20000)
    description: str = Field("", max_length=20000)
    models: list[ModelRef] = Field(min_length=1, description=(
        "registry or timm names (all = the registry's four), or {name: NAME, family: FAMILY} (docs/models.md)"))
    recipes: list[str] = Field(["naive", "fitted"], min_length=1, description=(
        "recipe names (fitted to the run; NAME@published for the source's values); 'fitted' (or 'tuned') = each "
        "model's own recipe fitted, 'published' = it as published"))
    epochs: Epochs = 10
    batch_size: int | None = Field(64, ge=1, description="one batch size for every recipe, so every run gets the same "
                                   "updates; null = each recipe's own")
    seeds: Annotated[int, Field(ge=1)] | Literal["auto"] = Field("auto", description=(
        "seeds per model x recipe: N = seeds 0..N-1; auto = 2, then more while a model's verdict is undecided "
        "(up to 5; with an lr axis, 2)"))
    data: DataSpec = DataSpec()
    scale: Literal["auto", "tiny", "full"] = "auto"
    concurrency: int = Field(2, ge=1)
    resources: ResourcesSpec = ResourcesSpec()
    set: dict[str, Any] = Field(default_factory=dict, description="recipe overrides for every run")
    lrs: tuple[LrPoint, ...] | None = Field(None, description=(
        "a learning-rate axis: multipliers of each recipe's own lr (x0.1, x1, ...) or absolute lrs at the run's "
        "batch (1e-4, ...); null = each recipe at its own lr only"))
    pretrained: Pretrained = Field(None, description=PRETRAINED_HELP)

    @field_validator("lrs", mode="before")
    @classmethod
    def _lr_axis(cls, v: Any) -> Any:
        """The axis parsed once, into typed points (`load_grid` parses it first, to name the flag or the
        file in a refusal); stored and shown as written back ('x0.3', '0.0003')."""
        if v is None or (isinstance(v, tuple) and all(isinstance(p, LrPoint) for p in v)):
            return v
        return parse_lrs(v, "lrs")

    @field_serializer("lrs")
    def _lr_labels(self, v: tuple[LrPoint, ...] | None) -> list[str] | None:
        return None if v is None else [p.label for p in v]


# --- YAML loading with field paths --------------------------------------------------------------
# `read_yaml` (a mapping from a file, with the harness's refusals) lives in recipe_file.py, below this
# module, so that recipe files are read by the same rules without an import circle; imported above.


def _fields_at(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model found by walking `loc` (for 'did you mean' on unknown keys)."""
    cls: Any = model_cls
    for part in loc[:-1]:
        if isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields:
            ann = cls.model_fields[part].annotation
            # dict[str, ParamSpec] -> ParamSpec; Optional[X] -> X
            args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
            cls = args[-1] if args else ann
        elif isinstance(cls, type) and issubclass(cls, BaseModel) and not isinstance(part, str):
            continue
        else:
            continue
    return list(cls.model_fields) if isinstance(cls, type) and issubclass(cls, BaseModel) else []


def _user_error(e: ValidationError, model_cls: type[BaseModel], prefix: str = "") -> UserError:
    errs = e.errors()
    # A typo in a required key shows up twice (unknown 'trails', missing 'trials'): name the typo.
    err = next((x for x in errs if x["type"] == "extra_forbidden"), errs[0])
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        return UserError(prefix + path, err.get("input"), "Unknown key. " + close_matches(str(loc[-1]), _fields_at(model_cls, loc)))
    if err["type"] == "missing":
        return UserError(prefix + path, None, "Required key is missing; add it.")
    msg = err["msg"].removeprefix("Value error, ")
    if msg.split(":")[0] in ("low", "high", "low/high", "values", "grace_period"):
        # Our own validators name the sub-field first: attach it to the path.
        sub, _, rest = msg.partition(": ")
        return UserError(prefix + path + "." + sub.split("/")[0], err.get("input") if not isinstance(err.get("input"), dict)
                         else err["input"].get(sub.split("/")[0]), rest[:1].upper() + rest[1:] + ".")
    return UserError(prefix + path, err.get("input"), msg[:1].upper() + msg[1:] + ".")


def parse_spec(model_cls: type[BaseModel], data: dict[str, Any], source: str = "") -> Any:
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        err = _user_error(e, model_cls)
        raise UserError(f"{source}: {err.field}" if source else err.field, err.value, err.fix) from None


def load_study(path: Path) -> StudySpec:
    """Study file -> StudySpec, with names and search keys checked against the registries."""
    spec: StudySpec = parse_spec(StudySpec, read_yaml(path), str(path))
    where = f"{path}: "
    entry = get_model_entry(spec.model, where + "model")
    if not is_recipe_file(spec.recipe):  # a file is read (and checked) by base_recipe() below
        parse_ref(spec.recipe, where + "recipe")
    for key in spec.search:
        if key not in TUNABLE:
            raise unknown(f"{where}search.{key}", key, TUNABLE)
    for key in spec.fixed:
        if key not in TUNABLE:
            raise unknown(f"{where}fixed.{key}", key, TUNABLE)
    check_spec(spec.data, where + "data")
    entry.size_kwargs(spec.data.image_size)
    try:
        spec.base_recipe()
    except UserError as e:
        raise UserError(where + e.field, e.value, e.fix) from None
    return spec


def describe_fit(name: str, *, model: str, data: Any, epochs: int, batch_size: int) -> list[str]:
    """`harness recipes show`: the recipe as published, with its source, then fitted to a run of `model`
    on `data` (epochs x its images at `batch_size`): the values that change and the rule behind each."""
    from harness.recipes import FIT_RULES

    ref, _ = parse_ref(name, "NAME")
    spec = resolve_run(model=model, recipe=f"{ref}@fitted" if ref else "fitted", data=data, epochs=epochs, batch_size=batch_size)
    published = get_recipe(spec.recipe.name)
    fitted = spec.recipe
    changed = {k: v for k, v in fitted.model_dump(exclude={"fit_notes", "form"}).items() if getattr(published, k) != v}
    return [f"# {published.name} as published: {published.source}",
            yaml.safe_dump(published.model_dump(exclude={"name", "source", "fit_notes", "form"}), sort_keys=False).rstrip(),
            f"# lr at its own batch {published.batch_size}: {published.scaled_lr():.3g} ({published.lr_rule} rule)",
            "",
            f"# {fitted.label()} for {epochs} epochs x {spec.train_images} images of {data.name} at batch {batch_size} "
            f"({spec.updates()} updates): the values that change",
            yaml.safe_dump(changed, sort_keys=False).rstrip() if changed else "(none)",
            f"# lr actually used: {fitted.scaled_lr():.3g} at batch {fitted.batch_size}; warmup "
            f"{round(fitted.warmup_epochs * spec.updates() / epochs)} updates",
            *(f"#   {note}" for note in fitted.fit_notes),
            "# rules: " + " | ".join(f"{k}: {v}" for k, v in FIT_RULES.items())]
