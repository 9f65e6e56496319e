"""`harness sweep`: an Optuna study run through the grid engine (harness/engine/), with ASHA.

This module is the command: it checks the study file and the database (`--resume` continues the
stored study; a second study of the same name is refused), turns each sampled config into a trial's
`RunSpec` (`SweepSpecs`), and as a `Sweep` command hands them to `experiment.run_experiment` (the
skeleton every command shares: the engine, the live pages, the closing lines); then settles Optuna's
bookkeeping (harness/study.py) and prints the top trials with the best parameters as YAML.
Ray lives in harness/engine/, Optuna in study.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from harness import models
from harness import study as study_mod
from harness import tables as rep
from harness.errors import UserError
from harness.experiment import Reported, Where, hand_back_recipe, recommended_path, run_experiment
from harness.recipes import with_overrides
from harness.specs import RunSpec, StudySpec, parse_spec, pretrained_fields
from harness.store import Store, stored_experiment

if TYPE_CHECKING:
    from harness.engine import Trials


@dataclass(frozen=True)
class SweepSpecs:
    """config sampled by Optuna -> RunSpec (the study's base run with the sampled recipe fields)."""

    base: RunSpec

    def __call__(self, config: dict[str, Any]) -> RunSpec:
        params = {k: v for k, v in config.items() if not k.startswith("_")}
        return self.base.model_copy(update={"recipe": with_overrides(self.base.recipe, params, "search")})

    def label(self, config: dict[str, Any]) -> str:
        return " ".join(f"{k}={_fmt(v)}" for k, v in config.items() if not k.startswith("_"))


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


@dataclass
class SweepResult:
    experiment_id: int
    status: str
    storage: Path
    table: Any = None  # pandas DataFrame of the trials, best first
    best: dict[str, Any] | None = field(default=None)
    recipe_file: Path | None = None  # the best trial's recipe, handed back (harness train --recipe FILE)


def run_sweep(study_path: Path, where: Where, *, resume: bool = False, max_failures: int = 1,
              echo: Callable[[str], None] = print, top: int = 10, pretrained: Any = None) -> SweepResult:
    """Run (or with `resume`, continue) the study in `study_path` as one experiment
    (`experiment.run_experiment`). Bad input -> UserError, nothing written. With `where.out`, the pages
    there are rewritten while it runs (live) and once at the end. `pretrained` ('timm' or {model: path})
    replaces the study's `pretrained:` (--pretrained, --pretrained-file). `where` is checked by the caller
    (`Where.check`); status "interrupted": the CLI exits 130."""
    study = study_mod.validate_study(study_path)
    if pretrained is not None:
        study = parse_spec(StudySpec, {**study.model_dump(mode="json"), "pretrained": pretrained}, str(study_path))
    sweep = Sweep(study, study_path, max_failures=max_failures, top=top)
    outcome, result = run_experiment(sweep, where, resume=resume, echo=echo, ray_name=study.name,
                                     resume_field=f"{study_path}: name")
    return replace(result, status=outcome.status, storage=outcome.exp_dir)


@dataclass(frozen=True)
class Sweep:
    """`harness sweep` as an `experiment.Command`: Optuna-sampled trials of the study's base run, and
    the top-trials table with the best trial's recipe handed back (`report` returns the `SweepResult`)."""

    study: StudySpec
    path: Path
    max_failures: int = 1
    top: int = 10
    kind = "sweep"

    @property
    def name(self) -> str:
        return self.study.name

    @property
    def description(self) -> str:
        return self.study.description

    @property
    def again(self) -> str:
        return f"harness sweep {self.path}"

    def spec_yaml(self) -> str:
        return yaml.safe_dump(self.study.model_dump(mode="json"), sort_keys=False)

    def resumed(self, row: dict[str, Any], where: Where, echo: Callable[[str], None]) -> Sweep:
        """The study as it was started, with a note when the file now differs."""
        stored = parse_spec(StudySpec, yaml.safe_load(row["spec"]), f"{where.shown_db} study {self.study.name}")
        if stored.model_dump() != self.study.model_dump():
            changed = [k for k in StudySpec.model_fields if getattr(stored, k) != getattr(self.study, k)]
            echo(f"note: {self.path} differs from the stored study in {', '.join(changed)}; "
                 "--resume continues the study as it was started.")
        return replace(self, study=stored)

    def check_new(self, where: Where) -> None:
        """A study name is its identity in Optuna's tables too: a taken one is refused; then the weights."""
        row = stored_experiment(where.db, kind="sweep", name=self.study.name)
        if row is not None or study_mod.study_exists(where.db, self.study.name):
            stored = parse_spec(StudySpec, yaml.safe_load(row["spec"]), "stored") if row else None
            if stored is not None and stored.search != self.study.search:
                raise UserError(f"{self.path}: name", self.study.name, f"A study of that name with a different search "
                                f"space is already in {where.shown_db}; give this one a new name (or --resume to continue "
                                "the stored one).")
            raise UserError(f"{self.path}: name", self.study.name, f"A study of that name is already in {where.shown_db}; "
                            "continue it with --resume, or give this one a new name.")
        models.check_weights([_base_run(self.study)])  # a foreign file, or timm's weights out of reach: exit 2

    def describe(self) -> list[str]:
        study_mod.quiet()
        return [f"warning: {w}" for w in study_mod.study_warnings(self.study, self.path)]

    def trials(self, where: Where) -> Trials:
        from harness.engine import Search, Trials

        study, base = self.study, _base_run(self.study)

        def headline(cluster: str, resources) -> str:
            return (f"harness sweep {study.name}: {study.trials} trials of {base.label()} on {study.data.name} "
                    f"{study.data.image_size}px, up to {study.scheduler.max_epochs} epochs, {study.concurrency} at a time, "
                    f"{resources.cpu:g} CPU + {resources.gpu:g} GPU each, sampler {study.sampler.type}, "
                    f"scheduler {study.scheduler.type} ({cluster})")

        return Trials(SweepSpecs(base), total=study.trials, concurrency=study.concurrency, resources=study.resources,
                      search=Search(study, where.db), max_failures=self.max_failures,
                      resources_field=f"{self.path}: resources", headline=headline)

    def report(self, where: Where, outcome: Any, echo: Callable[[str], None]) -> Reported:
        # Optuna trials of unfinished Ray trials stay RUNNING while the sweep can be resumed;
        # anything else RUNNING (an orphan of a killed driver, a NaN the searcher could not tell) fails.
        study = self.study
        study_mod.settle(where.db, study.name, keep=outcome.known if outcome.status == "interrupted" else set())
        store = rep.open_reader(where.db)
        try:
            result = summarize(store, outcome.experiment_id, study, echo=echo, top=self.top,
                               out=Path(where.out) if where.out is not None else None)
        finally:
            store.close()
        lines = [f"optuna: study '{study.name}' in {where.shown_db}, beside harness's tables (`optuna-dashboard {where.shown_db}`)"]
        if result.best is not None:
            lines.append(f"the best trial's model: harness export {result.best['run']} --out {study.name}.pth --db "
                         f"{where.shown_db} --storage-path {where.storage_path} (weights, recipe and model card)")
        return Reported(lines, result)


def _base_run(study: StudySpec) -> RunSpec:
    stands_for = models.stands_for(study.model)
    data = study.data
    if data.root is not None:  # trials run in Ray workers whose working folder is not ours
        data = data.model_copy(update={"root": data.root.resolve()})
    weights = pretrained_fields(study.pretrained, study.model, stands_for, "pretrained")
    tag = models.weights_tag(study.model, pretrained=bool(weights.get("pretrained")), pretrained_file=weights.get("pretrained_file"))
    return RunSpec(model=study.model, recipe=study.base_recipe(), data=data, epochs=study.scheduler.max_epochs,
                   seed=study.seed, threads=max(1, int(study.resources.cpu)), stands_for=stands_for, **weights,
                   tags={"weights": tag} if tag else {})


def summarize(store: Store, exp: int, study: StudySpec, *, echo: Callable[[str], None], top: int = 10,
              out: Path | None = None) -> SweepResult:
    """Top trials as a table and the best parameters as YAML, from the database alone; with `out`, the best
    trial's recipe as a file in `out/recipes/`."""

    df = rep.read_runs(store, exp)
    result = SweepResult(exp, "completed", Path())
    if df.empty:
        echo("no trials ran")
        return result
    ep = rep.read_epochs(store, df["id"].tolist()).rename(columns={study.metric: "m"})
    final = ep.groupby("run_id")["m"].last()
    best = ep.groupby("run_id")["m"].max() if study.mode == "max" else ep.groupby("run_id")["m"].min()
    rows = []
    for r in df.itertuples():
        params = r.params
        rows.append({"trial": r.optuna_trial, "status": r.status, "epochs": r.epochs_done,
                     f"final {study.metric}": final.get(r.id), f"best {study.metric}": best.get(r.id),
                     "test_acc": r.test_acc,
                     **{k: params["recipe"][k] for k in study.search}, "run": r.id})
    table = pd.DataFrame(rows)
    rank = table[f"final {study.metric}"].astype(float)
    order = table.assign(_done=table.status.eq("completed"), _v=rank if study.mode == "min" else -rank)
    table = table.loc[order.sort_values(["_done", "_v"], ascending=[False, True]).index]
    counts = table.status.value_counts().to_dict()
    echo("")
    echo(f"{study.name}: {len(table)} trials — " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        echo(table.head(top).to_string(index=False))
    result.table = table
    winner = table[table.status == "completed"].head(1)
    if winner.empty:
        echo("no trial completed all its epochs; no best parameters to report")
        return result
    w = winner.iloc[0]
    params = {k: (v.item() if hasattr(v, "item") else v) for k, v in w[list(study.search)].items()}
    params = {k: int(v) if study.search[k].type in ("int", "logint") else v for k, v in params.items()}
    result.best = {"run": int(w["run"]), "trial": w["trial"], "value": float(w[f"final {study.metric}"]), "params": params}
    snippet = yaml.safe_dump({"recipe": study.recipe, "fixed": {**study.fixed, **params}}, sort_keys=False)
    test = f"; test acc {w['test_acc']:.4f} (the held-out split: reported, not used to choose)" if pd.notna(w["test_acc"]) else ""
    echo("")
    echo(f"best: trial {w['trial']} (run {int(w['run'])}), chosen on {study.metric} {w[f'final {study.metric}']:.4f} "
         f"after {int(w['epochs'])} epochs{test}. As YAML (a study's recipe + fixed, or `harness train --set`):")
    echo(snippet.rstrip())
    sets = " ".join(f"--set {k}={v}" for k, v in {**study.fixed, **params}.items())
    echo(f"# harness train --model {study.model} --recipe {study.recipe} {sets}")
    result.recipe_file = _hand_back(store, exp, int(w["run"]), study, out, echo=echo) if out is not None else None
    return result


def _hand_back(store: Store, exp: int, run_id: int, study: StudySpec, out: Path, *, echo: Callable[[str], None]) -> Path:
    """The best trial's whole recipe (as it trained: fitted, with the sampled values) as a file that
    `harness train --recipe FILE` and a study's `recipe:` accept, and the same as timm train.py flags."""
    from harness.recipes import Recipe

    row = rep.read_runs(store, run_ids=[run_id]).iloc[0]
    recipe = Recipe.model_validate(row["params"]["recipe"])
    path = recommended_path(out, exp, study.name)
    test = f"{row['test_acc']:.4f}" if pd.notna(row["test_acc"]) else "none (no test split)"
    for line in hand_back_recipe(recipe, path, epochs=int(row["params"]["epochs"]), comment=[
        f"The best trial of sweep {study.name} (experiment {exp}, run {run_id}) for {study.model} on {study.data.name} "
        f"({study.data.image_size} px, up to {study.scheduler.max_epochs} epochs at batch {recipe.batch_size}).",
        f"Chosen on {study.metric} ({study.mode}) among {study.trials} trials; its test acc, reported and not used "
        f"to choose: {test}.",
        f"Train with it: harness train --model {study.model} --recipe {path}",
    ]):
        echo(line)
    return path
