"""`harness ablate`: which ingredient of a recipe matters, for this model, at this budget.

The ladder goes from `naive` to the model's recipe (fitted to the same budget) one ingredient at a
time; an ingredient is a named group of recipe fields (`recipes.INGREDIENTS`). Modes:
- `add`: start from naive, add one ingredient per rung, cumulatively, in the given order;
- `drop`: start from the full recipe, remove one ingredient per rung (leave-one-out: each rung is the
  full recipe with that one ingredient taken back to naive's values);
- `both`: the two ladders (the order matters in `add` because ingredients interact; `drop` is the check).

Every rung x seed is a `RunSpec` run through the benchmark's Ray grid (`engine.run_grid`), recorded as
one experiment of kind `ablate`; each run's `tags` (mode, rung, ingredient) say where it sits. The table
and the waterfall are computed from those rows only (`ablation_table`), like the before/after table.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml

from harness import report as rep
from harness.datasets import DataSpec, check_spec, train_images
from harness.errors import UserError, close_matches
from harness.files import check_out_dir, write_text_atomic
from harness.models import get_model_entry, resolve_scale, stand_in_label
from harness.recipes import INGREDIENTS, Budget, Recipe, parse_ref, resolve_recipe
from harness.specs import RunSpec
from harness.store import Store, shown_url

Mode = Literal["add", "drop", "both"]
DEFAULT_EPOCHS = 6  # 11 vit_tiny rungs of 6 epochs fit in 10 minutes on 2 cores (README)
VERDICT = {"better": "helps", "worse": "hurts", "no detectable difference": "no detectable difference", "": ""}


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


def resolve_ablation(model: str, *, recipe: str = "tuned", steps: str | None = None, mode: str = "add", seeds: int = 1,
                     epochs: int = DEFAULT_EPOCHS, batch_size: int = 64, data: DataSpec = DataSpec(image_size=16),
                     scale: str = "auto", cuda: bool = False, threads: int | None = 1) -> Ablation:
    """Everything resolved and checked before anything runs (UserError on bad input)."""
    entry = get_model_entry(model, "--model")
    for flag, v, least in (("--seeds", seeds, "Run at least 1 seed, e.g. --seeds 3"),
                           ("--epochs", epochs, "Train at least 1 epoch, e.g. --epochs 6"),
                           ("--batch-size", batch_size, "Use at least 1 image per step, e.g. --batch-size 64")):
        if v < 1:
            raise UserError(flag, v, least + ".")
    if mode not in ("add", "drop", "both"):
        raise UserError("--mode", mode, "Use add, drop or both.")
    check_spec(data, "--data")
    ran, _ = resolve_scale(model, scale, cuda=cuda)
    get_model_entry(ran).size_kwargs(data.image_size)
    budget = Budget(epochs, train_images(data), batch_size)
    name, _ = parse_ref(recipe, "--recipe")
    start = resolve_recipe("naive", family=entry.family, pretrained=False, budget=budget, field="--recipe")
    end = resolve_recipe(recipe, family=entry.family, pretrained=False, budget=budget, field="--recipe")
    available = changed(start, end)
    if not available:
        raise UserError("--recipe", recipe, "This recipe equals naive at this budget: nothing to ablate.")
    order = parse_steps(steps, available, end)
    rungs = ladder(start, end, order, mode)
    runs = tuple(
        RunSpec(model=ran, recipe=r.recipe, data=data, epochs=epochs, seed=seed, stands_for=model if ran != model else None,
                train_images=budget.train_images, threads=threads if not cuda else None,
                tags={"mode": r.mode, "rung": r.index, "ingredient": r.ingredient or ""})
        for r in rungs for seed in range(seeds))
    return Ablation(ran, model if ran != model else None, start, end, tuple(order), mode, tuple(rungs), runs)


# --- the table, from the database -------------------------------------------------------------------

TABLE_COLUMNS = ["mode", "rung", "ingredient", "recipe", "seeds", "final_mean", "final_std", "final_lo", "final_hi",
                 "delta_prev", "delta_prev_lo", "delta_prev_hi", "delta_start", "delta_start_lo", "delta_start_hi",
                 "interval", "verdict"]


def ablation_table(store: Store, experiment_id: int) -> pd.DataFrame:
    """One row per rung: final val acc (%), Δ against the previous rung (add) or the full recipe (drop)
    with its 95% interval, Δ against the start, and the verdict on the ingredient (helps / hurts / no
    detectable difference). Intervals as in the before/after table (report.compare)."""
    runs = rep.read_runs(store, experiment_id)
    if runs.empty:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    summary = rep.run_summary(store, runs, rep.read_epochs(store, runs["id"].tolist()))
    tags = runs["params"].map(lambda p: (p or {}).get("tags") or {})
    summary["mode"] = tags.map(lambda t: t.get("mode")).values
    summary["rung"] = tags.map(lambda t: t.get("rung")).values
    summary["ingredient"] = tags.map(lambda t: t.get("ingredient") or "").values
    rows = []
    for mode in ("add", "drop"):
        side = summary[summary["mode"] == mode]
        if side.empty:
            continue
        start = side[side["rung"] == 0]
        for rung, group in side.groupby("rung", sort=True):
            prev = start if mode == "drop" else side[side["rung"] == rung - 1]
            finals = 100 * group["final"].astype(float)
            row = {"mode": mode, "rung": int(rung), "ingredient": group["ingredient"].iloc[0], "recipe": group["recipe"].iloc[0],
                   "seeds": len(group), "final_mean": finals.mean(),
                   "final_std": finals.std(ddof=1) if finals.notna().sum() > 1 else math.nan,
                   "final_lo": 100 * group["final_lo"].iloc[0] if len(group) == 1 else math.nan,
                   "final_hi": 100 * group["final_hi"].iloc[0] if len(group) == 1 else math.nan}
            for key, base in (("delta_prev", prev), ("delta_start", start)):
                if rung == 0:
                    row.update({key: math.nan, f"{key}_lo": math.nan, f"{key}_hi": math.nan})
                    continue
                cmp = rep.compare(base, group)
                row[key] = finals.mean() - 100 * base["final"].astype(float).mean()
                row[f"{key}_lo"], row[f"{key}_hi"] = cmp["delta_final_lo"], cmp["delta_final_hi"]
                if key == "delta_prev":
                    row["interval"] = cmp["interval"]
                    # drop: the rung is the full recipe without the ingredient, so "worse" means it helps.
                    v = cmp["verdict"]
                    if mode == "drop":
                        v = {"better": "worse", "worse": "better"}.get(v, v)
                    row["verdict"] = VERDICT[v]
            rows.append(row)
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in table.iterrows():
        step = "start" if r["rung"] == 0 else ("+" if r["mode"] == "add" else "−") + str(r["ingredient"])
        delta = lambda k: "" if pd.isna(r[k]) else f"{r[k]:+.1f} [{r[f'{k}_lo']:+.1f}, {r[f'{k}_hi']:+.1f}]"  # noqa: E731
        rows.append({"mode": r["mode"], "rung": r["rung"], "ingredient": step, "seeds": r["seeds"],
                     "final val acc % [95% CI]": rep.format_final(r["final_mean"], r["final_std"], r["final_lo"], r["final_hi"]),
                     "Δ vs previous" if r["mode"] == "add" else "Δ vs full": delta("delta_prev"),
                     "Δ vs start": delta("delta_start") if r["mode"] == "add" else "",
                     "verdict": r["verdict"] or ""})
    return pd.DataFrame(rows).fillna("")


TABLE_LEGEND = ("Final validation accuracy in % (one seed: [95% Wilson interval]; several: mean ± std). add: each rung "
                "adds one ingredient to the previous one, Δ vs previous is that ingredient's effect at this point of the "
                "order — the order matters, because ingredients interact. drop: each rung is the full recipe without one "
                "ingredient (its fields back at naive's), Δ vs full; the check on add's order. Intervals: Newcombe's for "
                "one seed, paired bootstrap over seeds for two or more; verdict on the ingredient: helps / hurts when the "
                "interval excludes 0, else no detectable difference.")


def save_table(store: Store, experiment_id: int, out: Path) -> tuple[Path, Path, pd.DataFrame]:
    table = ablation_table(store, experiment_id)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"ablate-{experiment_id}.md", out / f"ablate-{experiment_id}.csv"
    text = (f"# Ablation (experiment {experiment_id})\n\n{TABLE_LEGEND}\n\n"
            + (rep.to_markdown(format_table(table)) if not table.empty else "No runs recorded yet.\n"))
    write_text_atomic(md, text)
    write_text_atomic(csv, table.to_csv(index=False))
    return md, csv, table


def waterfall_figure(table: pd.DataFrame, title: str):
    """add: a waterfall from the start's accuracy, one bar per ingredient's Δ, its 95% interval as an
    error bar at the bar's end. drop: one bar per ingredient, the Δ of removing it, with its interval."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    modes = [m for m in ("add", "drop") if (table["mode"] == m).any()]
    fig = make_subplots(rows=1, cols=len(modes), subplot_titles=[
        "add: naive → recipe, one ingredient at a time (val acc %)" if m == "add" else
        "drop: full recipe minus one ingredient (Δ val acc, points)" for m in modes])
    for col, mode in enumerate(modes, start=1):
        t = table[table["mode"] == mode].sort_values("rung")
        steps = t[t["rung"] > 0]
        if mode == "add":
            x = ["naive"] + [f"+{i}" for i in steps["ingredient"]]
            y = [t["final_mean"].iloc[0]] + steps["delta_prev"].tolist()
            fig.add_trace(go.Waterfall(x=x, y=y, measure=["absolute"] + ["relative"] * len(steps), name="add",
                                       text=[f"{v:.1f}" if i == 0 else f"{v:+.1f}" for i, v in enumerate(y)],
                                       textposition="outside", connector=dict(line=dict(color="#999"))), row=1, col=col)
            fig.add_scatter(x=x[1:], y=(t["final_mean"].iloc[0] + steps["delta_prev"].cumsum()).tolist(), mode="markers",
                            marker=dict(size=1, color="black"), name="95% interval of Δ", showlegend=col == 1,
                            error_y=dict(type="data", symmetric=False, array=(steps["delta_prev_hi"] - steps["delta_prev"]).tolist(),
                                         arrayminus=(steps["delta_prev"] - steps["delta_prev_lo"]).tolist(), color="black"),
                            row=1, col=col)
        else:
            fig.add_bar(x=[f"−{i}" for i in steps["ingredient"]], y=steps["delta_prev"], name="drop",
                        marker_color=["#d62728" if v < 0 else "#2ca02c" for v in steps["delta_prev"].fillna(0)],
                        error_y=dict(type="data", symmetric=False, array=(steps["delta_prev_hi"] - steps["delta_prev"]).tolist(),
                                     arrayminus=(steps["delta_prev"] - steps["delta_prev_lo"]).tolist()),
                        row=1, col=col)
    fig.update_layout(title=title, height=520, showlegend=True)
    return fig


def run_ablation(ab: Ablation, *, db: str, out: Path, concurrency: int = 2, address: str | None = None,
                 echo: Callable[[str], None] = print, resume: bool = False, storage_path: Path | str = "ray_results",
                 pages_every_s: float = 30.0, cuda: bool | None = None) -> int:
    """Run the ladder as an `ablate` experiment (with `resume`: continue the interrupted one of this
    model, which must be the same ladder), then its table, waterfall and the dashboards.
    `cuda` (default: torch.cuda.is_available(), as `resolve_ablation` was told): on a GPU machine the
    trials share the card as the benchmark's do (`benchmark.grid_resources`), so the full models it
    chose train on the GPU they were chosen for."""
    from harness.benchmark import grid_resources
    from harness.engine import Experiment, resumable, run_grid
    from harness.specs import ResourcesSpec
    from harness.store import check_url

    check_url(db)
    check_out_dir(out)
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    resources = grid_resources(ResourcesSpec(cpu=1), cuda=cuda, concurrency=concurrency)
    name = f"ablate {ab.stands_for or ab.model}"
    spec = {"model": ab.model, "stands_for": ab.stands_for, "start": ab.start.label(), "end": ab.end.label(),
            "mode": ab.mode, "steps": list(ab.steps), "epochs": ab.runs[0].epochs, "seeds": len({r.seed for r in ab.runs}),
            "batch_size": ab.end.batch_size, "data": ab.runs[0].data.model_dump(mode="json"),
            "rungs": [f"{r.mode} {r.index}: {r.recipe.name}" for r in ab.rungs]}
    exp_id = None
    if resume:
        row = resumable(db, kind="ablate", name=name, storage_path=storage_path, again=f"harness ablate --model {ab.stands_for or ab.model}")
        stored = yaml.safe_load(row["spec"])
        if stored != spec:
            changed = sorted(k for k in spec if stored.get(k) != spec[k])
            raise UserError("--resume", name, f"The ladder asked for differs from the one started in {', '.join(changed)}; "
                            "pass the same flags to continue it, or run without --resume.")
        exp_id = row["id"]
    for line in ab.describe():
        echo(line)

    def pages() -> None:
        from harness.dashboards import write_dashboards

        write_dashboards(db, out, live=True, refresh_s=pages_every_s)

    outcome = run_grid(list(ab.runs), db=db, experiment=Experiment(
        "ablate", name, f"{ab.start.label()} -> {ab.end.label()}, one ingredient at a time ({ab.mode})",
        yaml.safe_dump(spec, sort_keys=False), id=exp_id), concurrency=concurrency, resources=resources,
        address=address, storage_path=storage_path, pages=pages, pages_every_s=pages_every_s, echo=echo)
    exp = outcome.experiment_id
    from harness.dashboards import write_dashboards

    index = write_dashboards(db, out)
    store = rep.open_reader(db)
    try:
        table = ablation_table(store, exp)
    finally:
        store.close()
    echo("")
    echo(rep.to_text(format_table(table)))
    echo("")
    echo(f"table: {out / f'ablate-{exp}.md'} and .csv")
    echo(f"dashboards: {out / f'ablate-{exp}.html'} (waterfall), {index} (everything)")
    echo(f"results: experiment {exp} in {shown_url(db)}")
    if outcome.status == "interrupted":
        echo(f"continue with: harness ablate --model {ab.stands_for or ab.model} ... --resume (the same flags; "
             f"experiment {exp} keeps what finished)")
        raise SystemExit(130)
    return exp
