"""The command line's shared parts: the options several commands take (declared once, with their
bounds), and turning them into typed specs. `cli.py` holds the commands.

Bounds live with the option (`AtLeast`, `OneOf`), as a spec's live with its
field (pydantic `ge=`): a value out of bounds is refused before the command body runs.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click
import yaml

from harness import DEFAULT_DB
from harness.errors import UserError
from harness.experiment import DEFAULT_STORAGE, PAGES_EVERY_S, Where


def _flag(param: click.Parameter | None) -> str:
    """How a refusal names the parameter: an option by its flag, an argument by its metavar (RUN_ID)."""
    if param is None:
        return "value"
    return param.opts[0] if isinstance(param, click.Option) else param.human_readable_name


class AtLeast(click.ParamType):
    """An int option's bounds, declared with the option (as `ge=` is with a spec's field): a value outside
    them is refused in harness's words, the flag, the value and the fix, exit 2. `least` may name a
    `specs` type instead of a number (`"Epochs"`): the bound is then that type's `ge=`, read when a value
    is checked, so an option and the spec field it fills declare one bound (and --help imports no pydantic)."""

    name = "integer"

    def __init__(self, least: float | str | None, unit: str, example: float, *, most: float | None = None,
                 kind: type = int) -> None:
        self._least, self.unit, self.example, self.most, self.kind = least, unit, example, most, kind
        self.name = "integer" if kind is int else "number"

    @property
    def least(self) -> float | None:
        if not isinstance(self._least, str):
            return self._least
        from harness import specs

        return specs.least(getattr(specs, self._least))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        flag = _flag(param)
        try:
            number = self.kind(value)
        except (TypeError, ValueError):
            what = "a whole number" if self.kind is int else "a number"
            raise UserError(flag, value, f"Not {what}; e.g. {flag} {self.example}.") from None
        if self.least is not None and number < self.least:
            raise UserError(flag, number, f"Use at least {self.least} {self.unit}, e.g. {flag} {self.example}.")
        if self.most is not None and number > self.most:
            raise UserError(flag, number, f"Use at most {self.most} {self.unit}, e.g. {flag} {self.example}.")
        return number


class OneOf(click.Choice):
    """click's Choice, refused in harness's words (the flag, the value, the names it takes), exit 2."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)
        except click.BadParameter:
            raise UserError(_flag(param), value, f"Use one of {', '.join(map(str, self.choices))}.") from None


class SeedsOrAuto(AtLeast):
    """--seeds of a benchmark: a whole number of seeds, or `auto` (the sequential rule)."""

    name = "integer|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            int(value)
        except (TypeError, ValueError):
            flag = _flag(param)
            raise UserError(flag, value, f"Write a number of seeds or auto, e.g. {flag} 3 or {flag} auto.") from None
        return super().convert(value, param, ctx)


EPOCHS, SEEDS, BATCH = AtLeast("Epochs", "epoch", 10), AtLeast(1, "seed", 3), AtLeast(1, "image per step", 64)
SEEDS_OR_AUTO = SeedsOrAuto(1, "seed (or auto)", 3)
AT_ONCE, THREADS, SECONDS = AtLeast(1, "trial at a time", 2), AtLeast(1, "thread", 1), AtLeast(1, "second", 30)
RETRIES, EVERY_N, ROWS = AtLeast(0, "retries", 1), AtLeast(0, "epochs (0 = never)", 5), AtLeast(1, "row", 10)
RUN_ID = AtLeast(1, "(run ids count from 1; `harness report` lists them)", 3)
WHOLE, PIXELS = AtLeast(None, "", 0), AtLeast(None, "pixels", 32)  # bounded by the spec they fill (DataSpec)
HOURS = AtLeast(None, "hours", 2, kind=float)
OVERFIT_STEPS, LR_STEPS = AtLeast(1, "steps", 200, most=10000), AtLeast(10, "steps", 100, most=10000)


def parse_sets(items: tuple[str, ...]) -> dict[str, Any]:
    """--set key=value (value parsed as YAML: 3e-4, true, adamw, null)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError("--set", item, "Expected KEY=VALUE, e.g. --set lr=3e-4.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise UserError(f"--set {key}", value, "Not a value; write a number, true/false, a name or null.") from None
    return out


def data_options(image_size: int = 32):
    """The data flags, declared once for every command that loads data; the command receives them as one
    `data_opts` dict for `make_data_spec(**data_opts)`."""
    def decorate(f):
        @functools.wraps(f)
        def command(*args, data_name, data_root, download, image_size, train_size, workers, **kwargs):
            return f(*args, data_opts=dict(data_name=data_name, data_root=data_root, download=download,
                                           image_size=image_size, train_size=train_size, workers=workers), **kwargs)
        for option in reversed((
            click.option("--data", "data_name", default="digits", show_default=True,
                         help="digits | synthetic | cifar10 | cifar100 | tinyimagenet | imagefolder"),
            click.option("--data-root", type=click.Path(path_type=Path), default=None,
                         help="folder of the dataset (cifar*, tinyimagenet, imagefolder)"),
            click.option("--download", is_flag=True, help="cifar*: download into --data-root (needs internet)"),
            click.option("--image-size", type=PIXELS, default=image_size, show_default=True, help="pixels per side"),
            click.option("--train-size", type=WHOLE, default=None,
                         help="train on this many images, drawn class-balanced (synthetic: how many to generate)"),
            click.option("--workers", type=WHOLE, default=None,
                         help="folder sets: image-decoding loader workers [default: half the cores, at most 8]"),
        )):
            command = option(command)
        return command
    return decorate


def db_option(f):
    return click.option("--db", default=DEFAULT_DB, show_default=True, help="SQLAlchemy URL of the results database")(f)


def out_option(default: str = "dashboards", what: str = "the pages and tables"):
    return click.option("--out", type=click.Path(path_type=Path), default=Path(default), show_default=True,
                        help=f"folder for {what}")


def where_options(*, out_what: str, storage_layout: str):
    """--db, --out, --address, --storage-path and --pages-every of the commands that run trials through
    Ray, declared once; the command receives them as one `experiment.Where` (`where`), to check (`where.check()`)
    before anything runs: `sweep --validate` checks the study file alone, without SQLAlchemy."""
    def decorate(f):
        @functools.wraps(f)
        def command(*args, db, out, address, storage_path, pages_every, tensorboard, mlflow, **kwargs):
            where = Where(db=db, out=out, address=address, storage_path=storage_path, pages_every_s=pages_every,
                          tensorboard=tensorboard, mlflow=mlflow)
            return f(*args, where=where, **kwargs)
        for option in reversed((
            db_option,
            out_option(what=out_what),
            click.option("--address", default=None, help="attach to this Ray cluster (HOST:PORT as `ray start --head` "
                         "printed it, or auto) [default: start Ray here]"),
            click.option("--storage-path", type=click.Path(path_type=Path), default=DEFAULT_STORAGE, show_default=True,
                         help=f"where Ray keeps trial checkpoints and its state ({storage_layout}); shared storage on a cluster"),
            click.option("--pages-every", type=AtLeast(1, "second", 30, kind=float), default=PAGES_EVERY_S, show_default=True,
                         help="seconds between rewrites of the live pages while it runs"),
            tracker_options("<--out>/tensorboard"),
        )):
            command = option(command)
        return command
    return decorate


def tracker_options(folder: str):
    """--tensorboard/--no-tensorboard and --mlflow URI (harness/trackers.py), for `train` and the grid commands."""
    def decorate(f):
        f = click.option("--mlflow", default=None, metavar="URI",
                         help="also log every run to this MLflow tracking URI (sqlite:///mlflow.db, http://HOST:5000), "
                              "nested under one parent run per experiment; needs `uv sync --extra mlflow`")(f)
        return click.option("--tensorboard/--no-tensorboard", default=True, show_default=True,
                            help=f"every run's epochs as TensorBoard scalars under {folder}/<experiment>/<run>")(f)
    return decorate


def pretrained_options(f):
    """--pretrained / --pretrained-file of the commands that run grids and studies (train has its own)."""
    f = click.option("--pretrained-file", "pretrained_files", multiple=True, metavar="[MODEL=]PATH",
                     help="start every run of MODEL from this state dict (repeatable; PATH alone when one model "
                          "runs); 'fitted' (each model's own recipe) is then the family's fine-tuning one")(f)
    return click.option("--pretrained", is_flag=True, help="start from timm's own weights (the local Hugging Face cache); "
                        "'fitted' (each model's own recipe) is then the family's fine-tuning one")(f)


def parse_pretrained(pretrained: bool, files: tuple[str, ...], *, models: list[str] | None = None) -> Any:
    """The flags as a spec's `pretrained:` value ('timm', {model: path}) or None when neither is given."""
    if pretrained and files:
        raise UserError("--pretrained", True, "Give --pretrained (timm's weights) or --pretrained-file, not both.")
    if pretrained:
        return "timm"
    if not files:
        return None
    out: dict[str, str] = {}
    for item in files:
        model, sep, path = item.rpartition("=")
        if not sep:
            if not models or len(models) != 1:
                raise UserError("--pretrained-file", item, "Name the model it is for: --pretrained-file MODEL=PATH "
                                "(PATH alone only when one model runs).")
            model = models[0]
        out[model] = path
    return out


def make_data_spec(data_name: str, data_root: Path | None, download: bool, image_size: int,
                   train_size: int | None = None, workers: int | None = None):
    from pydantic import ValidationError

    from harness.data import DataSpec
    from harness.specs import _user_error

    try:
        return DataSpec(name=data_name, root=data_root, download=download, image_size=image_size,
                        train_size=train_size, workers=workers)
    except ValidationError as e:
        raise _user_error(e, DataSpec, prefix="--data.") from None


