"""`harness sweep`: an Optuna study run through the grid engine (harness/engine/), with ASHA.

This module is the command: it checks the study file and the database (`--resume` continues the
stored study; a second study of the same name is refused), turns each sampled config into a trial's
`RunSpec` (`SweepSpecs`), hands the trials to `grids.run` (the engine, with the live pages), settles
Optuna's bookkeeping (harness/study.py) and prints the top trials with the best parameters as YAML.
Ray lives in harness/engine/, Optuna in study.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa
import yaml

from harness import engine, grids, models
from harness import report as rep
from harness import study as study_mod
from harness.errors import UserError
from harness.grids import Where
from harness.recipes import with_overrides
from harness.specs import RunSpec, StudySpec, parse_spec, pretrained_fields
from harness.store import Store, sqlite_path


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


def _stored_study(db: str, name: str) -> tuple[dict | None, bool]:
    """(the harness experiment row of the sweep, whether Optuna holds a study of that name); reads only."""
    path = sqlite_path(db)
    if path is not None and not path.exists():
        return None, False
    engine_ = sa.create_engine(db)
    try:
        has_harness = "experiments" in sa.inspect(engine_).get_table_names()
    finally:
        engine_.dispose()
    exp = None
    if has_harness:
        store = Store(db, create=False)
        try:
            exp = store.find_experiment(kind="sweep", name=name)
        finally:
            store.close()
    return exp, study_mod.study_exists(db, name)


def run_sweep(study_path: Path, where: Where, *, resume: bool = False, max_failures: int = 1,
              echo: Callable[[str], None] = print, top: int = 10, pretrained: Any = None) -> SweepResult:
    """Run (or with `resume`, continue) the study in `study_path`. Bad input -> UserError, nothing written.
    With `where.out`, the pages there are rewritten while it runs (live) and once at the end.
    `pretrained` ('timm' or {model: path}) replaces the study's `pretrained:` (--pretrained, --pretrained-file).
    `where` is checked by the caller (`Where.check`); status "interrupted": the CLI exits 130."""
    study = study_mod.validate_study(study_path)
    if pretrained is not None:
        study = parse_spec(StudySpec, {**study.model_dump(mode="json"), "pretrained": pretrained}, str(study_path))
    exp_row, has_optuna = _stored_study(where.db, study.name)
    storage = Path(where.storage_path).resolve()
    if resume:
        exp_row = engine.resumable(where.db, kind="sweep", name=study.name, storage_path=storage, ray_name=study.name,
                                   again=f"harness sweep {study_path}", field=f"{study_path}: name")
        stored = parse_spec(StudySpec, yaml.safe_load(exp_row["spec"]), f"{where.shown_db} study {study.name}")
        if stored.model_dump() != study.model_dump():
            changed = [k for k in StudySpec.model_fields if getattr(stored, k) != getattr(study, k)]
            echo(f"note: {study_path} differs from the stored study in {', '.join(changed)}; "
                 "--resume continues the study as it was started.")
        study = stored
    else:
        if exp_row is not None or has_optuna:
            stored = parse_spec(StudySpec, yaml.safe_load(exp_row["spec"]), "stored") if exp_row else None
            if stored is not None and stored.search != study.search:
                raise UserError(f"{study_path}: name", study.name, f"A study of that name with a different search space is "
                                f"already in {where.shown_db}; give this one a new name (or --resume to continue the stored one).")
            raise UserError(f"{study_path}: name", study.name, f"A study of that name is already in {where.shown_db}; continue it with "
                            "--resume, or give this one a new name.")
    for w in study_mod.study_warnings(study, study_path):
        echo(f"warning: {w}")
    study_mod.quiet()
    base = _base_run(study)
    if not resume:  # a resumed trial starts from its checkpoint, not from these weights
        models.check_weights([base])  # a foreign file, or timm's weights out of reach: exit 2 before any row

    def headline(cluster: str, resources) -> str:
        return (f"harness sweep {study.name}: {study.trials} trials of {base.label()} on {study.data.name} "
                f"{study.data.image_size}px, up to {study.scheduler.max_epochs} epochs, {study.concurrency} at a time, "
                f"{resources.cpu:g} CPU + {resources.gpu:g} GPU each, sampler {study.sampler.type}, "
                f"scheduler {study.scheduler.type} ({cluster})")

    outcome = grids.run(
        where, SweepSpecs(base), experiment=engine.Experiment("sweep", study.name, study.description,
                                                              yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False),
                                                              id=exp_row["id"] if resume else None),
        total=study.trials, resources=study.resources, concurrency=study.concurrency,
        search=engine.Search(study, where.db), ray_name=study.name, max_failures=max_failures,
        resources_field=f"{study_path}: resources", headline=headline, echo=echo)
    # Optuna trials of unfinished Ray trials stay RUNNING while the sweep can be resumed;
    # anything else RUNNING (an orphan of a killed driver, a NaN the searcher could not tell) fails.
    study_mod.settle(where.db, study.name, keep=outcome.known if outcome.status == "interrupted" else set())
    store = rep.open_reader(where.db)
    try:
        result = summarize(store, outcome.experiment_id, study, echo=echo, top=top,
                           out=Path(where.out) if where.out is not None else None)
    finally:
        store.close()
    result.status, result.storage = outcome.status, outcome.exp_dir
    index = grids.write_pages(where)
    if index is not None:
        echo(f"dashboards: {index} (open it in a browser; works offline)")
    if result.best is not None:
        echo(f"the best trial's model: harness export {result.best['run']} --out {study.name}.pth --db {where.shown_db} "
             f"--storage-path {storage} (weights, recipe and model card)")
    echo(f"results: experiment {outcome.experiment_id} ({study.trials} trials) in {where.shown_db} (tables experiments/runs/epochs; "
         f"Optuna study '{study.name}' in the same database: `optuna-dashboard {where.shown_db}`); "
         f"Ray files and trial checkpoints in {outcome.exp_dir}")
    if outcome.status == "interrupted":
        echo(f"continue with: harness sweep {study_path} --resume --db {where.shown_db} --storage-path {storage}")
    return result


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
    from harness.recipe_file import timm_train_flags, write_recipe_file
    from harness.recipes import Recipe

    row = rep.read_runs(store, run_ids=[run_id]).iloc[0]
    recipe = Recipe.model_validate(row["params"]["recipe"])
    path = out / "recipes" / f"recommended-{exp}-{study.name}.yaml"
    test = f"{row['test_acc']:.4f}" if pd.notna(row["test_acc"]) else "none (no test split)"
    write_recipe_file(recipe, path, comment=[
        f"The best trial of sweep {study.name} (experiment {exp}, run {run_id}) for {study.model} on {study.data.name} "
        f"({study.data.image_size} px, up to {study.scheduler.max_epochs} epochs at batch {recipe.batch_size}).",
        f"Chosen on {study.metric} ({study.mode}) among {study.trials} trials; its test acc, reported and not used "
        f"to choose: {test}.",
        f"Train with it: harness train --model {study.model} --recipe {path}",
    ])
    flags = timm_train_flags(recipe, epochs=int(row["params"]["epochs"]))
    echo(f"recommended recipe: {path}")
    echo(f"  as timm train.py flags: {flags}")
    return path
