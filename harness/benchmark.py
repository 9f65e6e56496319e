"""`harness benchmark`: the models x recipes x seeds grid, run through the sweep's Ray Tune path,
then the before/after table and the dashboards.

The grid file (benchmarks/naive_vs_recipe.yaml by default) is a `BenchmarkSpec`; command-line
flags override its fields. Resolution happens here, once, before anything runs: model and recipe
names are checked against the registries, 'all' and 'fitted' are expanded, and `--scale` decides
whether the full models or their same-family CPU stand-ins run (every label says which).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness.errors import UserError
from harness.experiment import Reported, Where, hand_back_recipe, recommended_path, run_experiment
from harness.models import ALL, MODELS, check_weights, get_model_entry, resolve_scale
from harness.recipe_file import is_recipe_file, load_recipe_file
from harness.recipes import parse_lrs, parse_ref
from harness.specs import BenchmarkSpec, RunSpec, parse_spec, pretrained_fields, read_yaml, resolve_run

if TYPE_CHECKING:
    from harness.engine import Trials

DEFAULT_GRID = Path("benchmarks/naive_vs_recipe.yaml")
REPO_GRID = Path(__file__).resolve().parent.parent / DEFAULT_GRID  # when run from another folder


def default_grid() -> Path:
    return DEFAULT_GRID if DEFAULT_GRID.is_file() else REPO_GRID


def split_names(value: str | list[Any] | None) -> list[str] | None:
    """'a,b' or ['a', 'b'] -> ['a', 'b'] (YAML may give either)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [s.strip() for s in items if s.strip()]


def load_grid(path: Path | None, *, models: str | None = None, recipes: str | None = None, epochs: int | None = None,
              seeds: int | str | None = None, data: str | None = None, image_size: int | None = None, scale: str | None = None,
              concurrency: int | None = None, batch_size: int | None = None,
              sets: dict[str, Any] | None = None, lrs: str | None = None,
              pretrained: str | dict[str, str] | None = None) -> BenchmarkSpec:
    """The grid file with the command line's overrides applied, validated (UserError on bad input; the
    overrides' bounds are the CLI's click types, the file's the spec's fields)."""
    for flag, v in (("--models", models), ("--recipes", recipes)):
        if v is not None and not split_names(v):
            raise UserError(flag, v, "Give at least one name, comma-separated (e.g. resnet50,vit_base or all).")
    source = Path(path) if path is not None else default_grid()
    raw = read_yaml(source)
    for key in ("models", "recipes"):
        if isinstance(raw.get(key), str):
            raw[key] = split_names(raw[key])
    if models is not None:
        raw["models"] = split_names(models)
    if recipes is not None:
        raw["recipes"] = split_names(recipes)
    for key, v in (("epochs", epochs), ("seeds", seeds), ("scale", scale), ("concurrency", concurrency),
                   ("batch_size", batch_size)):
        if v is not None:
            raw[key] = v
    if data is not None or image_size is not None:
        d = dict(raw.get("data") or {}) if isinstance(raw.get("data"), dict) else {}
        if data is not None and data != d.get("name"):
            d = {k: v for k, v in d.items() if k not in ("root", "num_classes", "train_size")} | {"name": data}
        if image_size is not None:
            d["image_size"] = image_size
        raw["data"] = d
    if sets:
        raw["set"] = {**(raw.get("set") or {}), **sets}
    if pretrained is not None:  # --pretrained (timm) or --pretrained-file MODEL=PATH
        raw["pretrained"] = pretrained
    where = f"{source}: "
    if lrs is not None:
        raw["lrs"] = lrs
    if raw.get("lrs") is not None:  # normalised once: the stored spec holds the axis as it resolved
        field = "--lrs" if lrs is not None else where + "lrs"
        raw["lrs"] = parse_lrs(raw["lrs"], field)  # typed points from here on
        fixed = sorted({"lr"} & set(raw.get("set") or {}))  # a floor or warmup start set is scaled with the axis
        if fixed:
            by = "--set" if sets and set(fixed) & set(sets) else where + "set"
            raise UserError(by, {k: raw["set"][k] for k in fixed}, "The lr axis sets each run's lr (and scales its "
                            "schedule's floor and warmup start with it); drop the lr from --set/set:, or drop the axis.")
    spec: BenchmarkSpec = parse_spec(BenchmarkSpec, raw, str(source))
    for name in spec.models:
        if name != "all":
            get_model_entry(name, "--models" if models is not None else where + "models")
    refs = []  # what each entry names ('tuned' and 'fitted' are one)
    for name in spec.recipes:
        if is_recipe_file(name):  # a recipe file (a benchmark's or sweep's recommended one), used as written
            load_recipe_file(Path(name), "--recipes" if recipes is not None else where + "recipes")
            refs.append(Path(name).resolve())
            continue
        refs.append(parse_ref(name, "--recipes" if recipes is not None else where + "recipes"))
    if len(set(refs)) < len(refs):
        raise UserError("--recipes" if recipes is not None else where + "recipes", spec.recipes,
                        "A recipe is listed twice; list each once.")
    # The file's `set:` values, checked here so the error names the file and `set.<key>` (the command
    # line's --set values are checked per run, as `--set <key>`).
    from harness.recipes import get_recipe, with_overrides

    with_overrides(get_recipe("naive"), {k: v for k, v in spec.set.items() if k not in (sets or {})}, where + "set")
    return spec


@dataclass(frozen=True)
class Grid:
    runs: list[RunSpec]
    scale: str  # tiny | full (auto resolved)
    note: str | None  # the one line saying which stand-ins run, or None
    # --seeds auto: groups[g][s] = the indices in `runs` of model g's recipes at seed s (every seed up to the cap);
    # None for a fixed seed count
    seed_groups: tuple[tuple[tuple[int, ...], ...], ...] | None = None


def expand_models(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        out += list(ALL) if name == "all" else [name]
    return list(dict.fromkeys(out))


def resolve_grid(spec: BenchmarkSpec, *, cuda: bool) -> Grid:
    """Every RunSpec of the grid, model-major (model, then recipe, then seed)."""
    from harness.datasets import check_spec, train_images
    from harness.tables.stats import FIRST_LOOK, MAX_SEEDS

    check_spec(spec.data, "data")
    n_train = train_images(spec.data)  # once for the grid: an image folder is listed once, not once per run
    # (model that runs, full model it stands for)
    pairs = [resolve_scale(name, spec.scale, cuda=cuda) for name in expand_models(spec.models)]
    seen: set[str] = set()
    pairs = [p for p in pairs if not (p[0] in seen or seen.add(p[0]))]  # one per model that runs, first wins
    points = spec.lrs or (None,)
    # --seeds auto: every seed up to the cap is a run of the grid; the looks decide which of them run. With an lr
    # axis the comparisons are many per model (each lr, each best): the rule's first look, fixed.
    sequential = spec.seeds == "auto" and not spec.lrs
    n_seeds = MAX_SEEDS if sequential else FIRST_LOOK if spec.seeds == "auto" else spec.seeds
    tags = {"seed_rule": "auto"} if sequential else {}
    runs: list[RunSpec] = []
    for ran, stands_for in pairs:
        for recipe in spec.recipes:
            for point in points:
                for seed in range(n_seeds):
                    run = resolve_run(model=ran, recipe=recipe, data=spec.data, overrides=spec.set, epochs=spec.epochs,
                                      batch_size=spec.batch_size, recipe_field="recipes", n_train=n_train, seed=seed,
                                      stands_for=stands_for, lr_point=point, tags=tags,
                                      **pretrained_fields(spec.pretrained, ran, stands_for, "pretrained"),
                                      # one torch thread per CPU a trial holds: concurrent trials do not oversubscribe
                                      threads=max(1, int(spec.resources.cpu)) if not cuda else None)
                    runs.append(run)
    swapped = [f"{ran} for {sf}" for ran, sf in pairs if sf]
    note = None
    if swapped:
        where = "CPU" if not cuda else "--scale tiny"
        note = f"{where}: running {', '.join(swapped)}; use --scale full to run the full models" + (
            " (slow on CPU)" if not cuda else "")
    groups = None
    if sequential:
        by_model = [ran for ran, _ in pairs]
        groups = tuple(tuple(tuple(i for i, r in enumerate(runs) if r.model == ran and r.seed == seed)
                             for seed in range(n_seeds)) for ran in by_model)
    return Grid(runs, spec.scale if spec.scale != "auto" else ("full" if cuda else "tiny"), note, groups)


def budget_lines(grid: Grid) -> list[str]:
    """What each recipe of the grid gets, resolved once: batch, updates, lr, warmup (the fitted values)."""
    from harness.tables.stats import FIRST_LOOK, MAX_SEEDS

    first = grid.runs[0]
    seeds = (f"seeds auto: {FIRST_LOOK} per model x recipe, then one more at a time for a model whose verdict is "
             f"undecided, up to {MAX_SEEDS} ({len(grid.runs)} runs at most)" if grid.seed_groups else
             f"{len({r.seed for r in grid.runs})} seed(s)")
    out = [f"budget: {first.epochs} epochs x {first.train_images} images on {first.data.name} at {first.data.image_size} px, "
           f"{seeds}"]
    by_recipe: dict[tuple[str, str], list[RunSpec]] = {}
    for r in grid.runs:
        by_recipe.setdefault((r.model, r.recipe.label()), []).append(r)
    for (model, label), group in by_recipe.items():
        r, rc = group[0], group[0].recipe
        spe = r.updates() // r.epochs
        own = r.tags.get("own_lr", rc.scaled_lr())
        axis = list(dict.fromkeys(f"{g.recipe.scaled_lr():.3g}" for g in group))
        lr = f"lr {own:.3g}" + (f" (own); lr axis {', '.join(axis)}" if "lr_point" in r.tags else "")
        out.append(f"  {model:<16} {label:<20} batch {rc.batch_size}, {r.updates()} updates, {lr}, "
                   f"warmup {round(rc.warmup_epochs * spe)} updates, {rc.schedule}")
    for model in dict.fromkeys(r.model for r in grid.runs):
        warning = get_model_entry(model).size_warning(first.data.image_size)
        if warning:
            out.append(f"warning: {warning}")
    return out


def family_lines(grid: Grid) -> list[str]:
    """For each timm model run by name: the recipe family it got and why (its runs' params.tags say the same)."""
    out = []
    for r in {r.model: r for r in grid.runs if "family" in r.tags}.values():
        out.append(f"{r.model}: family {r.tags['family']} (its fitted recipe and doctor rules): {r.tags['family_why']}")
    return out


def resolved_yaml(spec: BenchmarkSpec, grid: Grid) -> str:
    """The experiment's spec as stored: the grid after overrides, with the scale and runs resolved."""
    doc = spec.model_dump(mode="json")
    doc["scale"] = grid.scale
    doc["runs"] = [f"{r.label()} / {r.recipe.label()} / seed {r.seed}: batch {r.recipe.batch_size}, "
                   f"lr {r.recipe.scaled_lr():.3g}, {r.updates()} updates" for r in grid.runs]
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def run_benchmark(spec: BenchmarkSpec, where: Where, *, echo: Callable[[str], None] = print, cuda: bool | None = None,
                  resume: bool = False, grid_file: Path | None = None):
    """Run the grid as one experiment (`experiment.run_experiment`: through Ray Tune, with live pages),
    then print the before/after table (and, with an lr axis, the sensitivity tables) and write them with
    the pages into `where.out`. Returns the engine's Outcome (status "interrupted": the CLI exits 130).
    With `resume`, the interrupted benchmark of this name continues as it was started: finished runs are
    kept, interrupted ones continue from their checkpoints, missing ones start. `where` is checked by the
    caller (`Where.check`). `grid_file`: the grid file it came from (None: the default grid), named again in
    its continue-with line (--resume finds the experiment by the grid's name)."""
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    return run_experiment(Benchmark(spec, cuda, grid_file), where, resume=resume, echo=echo).outcome


@dataclass(frozen=True)
class Benchmark:
    """`harness benchmark` as a `experiment.Command`: the grid's runs and its tables."""

    spec: BenchmarkSpec
    cuda: bool
    grid_file: Path | None = None  # the grid file given (None: the default grid)
    kind = "benchmark"

    @property
    def again(self) -> str:
        """The command line that starts it anew: with its grid file, whose name --resume looks up."""
        import shlex

        return "harness benchmark" + (f" {shlex.quote(str(self.grid_file))}" if self.grid_file is not None else "")

    @cached_property
    def grid(self) -> Grid:
        """Resolved when first needed: a resumed benchmark resolves only the grid it was started with."""
        return resolve_grid(self.spec, cuda=self.cuda)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def description(self) -> str:
        return self.spec.description

    def spec_yaml(self) -> str:
        return resolved_yaml(self.spec, self.grid)

    def resumed(self, row: dict[str, Any], where: Where, echo: Callable[[str], None]) -> Benchmark:
        """The grid as it was started (a note when the one given differs); refused when it now resolves
        to other runs: run i continues run i's checkpoint, so it must be the same run."""
        stored = yaml.safe_load(row["spec"])
        stored_runs = stored.pop("runs", None)
        spec = parse_spec(BenchmarkSpec, stored, f"{where.shown_db} benchmark {self.spec.name}")
        if spec != self.spec.model_copy(update={"scale": spec.scale}):
            echo(f"note: the grid given differs from benchmark {spec.name} as it was started; --resume continues it as started.")
        started = Benchmark(spec, self.cuda, self.grid_file)
        if yaml.safe_load(started.spec_yaml()).get("runs") != stored_runs:
            raise UserError("--resume", spec.name, "The grid resolves to other runs than when it was started (the data, "
                            "the device or the harness changed); run it without --resume.")
        return started

    def check_new(self, where: Where) -> None:
        check_weights(self.grid.runs)  # a foreign file, or timm's weights out of reach: exit 2 before any row

    def describe(self) -> list[str]:
        return ([self.grid.note] if self.grid.note else []) + family_lines(self.grid) + budget_lines(self.grid)

    def trials(self, where: Where) -> Trials:
        from harness.engine import Trials

        looks = None
        if self.grid.seed_groups:
            from harness.engine import SeedLooks
            from harness.tables.before_after import group_decided
            from harness.tables.stats import FIRST_LOOK

            labels = tuple(self.grid.runs[seeds[0][0]].label() for seeds in self.grid.seed_groups)
            looks = SeedLooks(self.grid.seed_groups, first=FIRST_LOOK, judge=group_decided, labels=labels)
        return Trials.grid(self.grid.runs, concurrency=self.spec.concurrency, resources=self.spec.resources, looks=looks)

    def report(self, where: Where, outcome: Any, echo: Callable[[str], None]) -> Reported:
        return Reported(finish(where, outcome.experiment_id, echo=echo))


def finish(where: Where, experiment_id: int, *, echo: Callable[[str], None] = print) -> list[str]:
    """The tables in the terminal, their Markdown/CSV in `where.out`; with an lr axis, each model's
    recommended recipe as a file (`hand_back`). Returns the lines that name the files."""
    from harness import sensitivity as sens
    from harness import tables as rep

    store = rep.open_reader(where.db)
    try:
        table = rep.before_after(store, experiment_id)
        runs, points, summary = sens.sensitivity(store, experiment_id)
        out = Path(where.out) if where.out is not None else None  # no folder: the recommendation printed, no file
        recipes = hand_back(store, experiment_id, runs, summary, out, echo=echo) if not points.empty else []
    finally:
        store.close()
    split = rep.splits_of(table["split"]) or "test"
    echo("")
    echo(f"before/after ({split} acc %, the final weights on the held-out {split} split; several seeds: mean±std; "
         "Δ in points with a paired interval that carries the seeds and the test images; seeds: how many and why; "
         "the intervals of each side, the medians and the legend are in the .md):")
    echo(rep.to_text(rep.format_before_after(table, terminal=True), columns=rep.TERMINAL_COLUMNS))
    if not points.empty:
        echo("")
        echo("lr sensitivity (the best lr and its window chosen on validation; test acc % over seeds: median [min–max]; "
             "the legend is in the .md):")
        echo(rep.to_text(sens.format_summary(summary)))
        echo("")
        echo(rep.to_text(sens.format_curve(points)))
    lines = list(recipes)
    if where.out is not None:
        out = Path(where.out)
        lines.append(f"table: {out / f'before_after-{experiment_id}.md'} and .csv, page {out / f'before_after-{experiment_id}.html'}")
        if not points.empty:
            lines.append(f"lr sensitivity: {out / f'sensitivity-{experiment_id}.md'} and .csv, "
                         f"page {out / f'sensitivity-{experiment_id}.html'}")
    return lines


def hand_back(store: Any, experiment_id: int, runs: Any, summary: Any, out: Path | None, *,
              echo: Callable[[str], None] = print) -> list[str]:
    """Per model of an lr grid: the recommended recipe (`sensitivity.recommend`, by its stated
    rule, `sensitivity.RECOMMEND_RULE`) written as `out/recipes/recommended-<experiment>-<model>.yaml`, a file
    `harness train --recipe FILE` runs, with how it was chosen and its test accuracy in its header. Returns
    the lines that name each file, with the same recipe as timm train.py flags."""
    from harness import sensitivity as sens
    from harness import tables as rep
    from harness.recipes import Recipe

    lines = []
    for _, best in sens.recommend(runs, summary).iterrows():
        stored = rep.read_runs(store, run_ids=best["run_ids"][:1])
        if stored.empty:
            continue
        params = stored.iloc[0]["params"]
        recipe = Recipe.model_validate(params["recipe"])
        model = str(stored.iloc[0]["model"])  # what ran and was measured (a CPU stand-in says so in the header)
        path = recommended_path(out, experiment_id, model)
        lr = float(best["safe_lr"])
        tied = f" (tied on validation with {', '.join(best['tied'])}: the wider window chose)" if best["tied"] else ""
        away = ("no lr of its grid collapsed" if math.isinf(best["safe_from_bad"]) else
                f"{best['safe_from_bad']:.2g} decades from the nearest lr where a seed collapsed or diverged")
        edge = (f" The best lr ({best['best_lr']:.3g}) is at the grid's edge: the best may lie beyond it; add "
                f"{best['add_lrs']} to the grid." if best["best_at_edge"] else "")
        comment = [
            f"The recipe harness recommends for {best['model']} on {params['data']['name']} "
            f"({params['data']['image_size']} px, {params['epochs']} epochs at batch {recipe.batch_size}): "
            f"{best['recipe']} at lr {lr:.3g} (peak, at this batch){tied}.",
            f"The rule that chose it: {sens.RECOMMEND_RULE}.",
            f"Here: the best lr on validation was {best['best_lr']:.3g} ({best['best_val']:.1f}% median over "
            f"{best['seeds']} seed(s)); the window {best['window_lo']:.3g}-{best['window_hi']:.3g}; {lr:.3g} "
            f"(val {best['safe_val']:.1f}%) is {away}. Test acc there, reported and not used to choose: median "
            f"{best['safe_test']:.1f}% (experiment {experiment_id}).{edge}",
            f"Its own (fitted) lr was {best['own_lr']:.3g}: the chosen one is {lr / best['own_lr']:.3g}x it.",
            f"Train with it: harness train --model {model} --recipe {path} --data {params['data']['name']} "
            f"--image-size {params['data']['image_size']} --epochs {params['epochs']} (the budget it was fitted to)",
        ]
        named, flags = hand_back_recipe(recipe, path, comment=comment, epochs=int(params["epochs"]),
                                 title=f"recommended recipe for {best['model']}",
                                 about=f"  ({best['recipe']} at lr {lr:.3g}, val {best['safe_val']:.1f}%, "
                                       f"test {best['safe_test']:.1f}%; {away}){tied}")
        lines.append(named)
        if best["best_at_edge"]:
            lines.append(f"  the best lr ({best['best_lr']:.3g}) is at the grid's edge: add {best['add_lrs']} "
                         "(e.g. --lrs with them) to see past it")
        lines.append(flags)
        # Of the chosen point's seeds, the run with the highest final val acc: validation chooses here too.
        chosen = rep.read_runs(store, run_ids=list(best["run_ids"])).sort_values("final_val_acc", ascending=False)
        lines.append(f"  its trained model: harness export {int(chosen.iloc[0]['id'])} --out {model}.pth "
                     "(weights, recipe and model card; add the --db and --storage-path this ran with)")
    return lines


__all__ = ["Benchmark", "load_grid", "resolve_grid", "run_benchmark", "finish", "hand_back", "default_grid", "MODELS"]
