"""The command line: a thin skin over the library.

Each command turns its flags into typed specs (the shared options and their parsing are in
`options.py`), calls the library, prints through `terminal.echo`, and ends by saying where the
results are. The exit codes are decided here only: 0, 1 (a doctor check failed), 2 (bad input,
refused before anything is written), 130 (stopped by Ctrl-C / SIGTERM; `--resume` continues it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from harness.errors import UserError
from harness.experiment import DEFAULT_STORAGE, PAGES_EVERY_S
from harness.options import (
    AT_ONCE,
    BATCH,
    EPOCHS,
    EVERY_N,
    HOURS,
    LR_STEPS,
    OVERFIT_STEPS,
    PIXELS,
    RETRIES,
    ROWS,
    RUN_ID,
    SECONDS,
    SEEDS,
    SEEDS_OR_AUTO,
    THREADS,
    WHOLE,
    OneOf,
    data_options,
    db_option,
    make_data_spec,
    out_option,
    parse_pretrained,
    parse_sets,
    pretrained_options,
    tracker_options,
    where_options,
)
from harness.terminal import MESSAGE_COLUMNS as TERMINAL_WIDTH  # what the listings are laid out for
from harness.terminal import echo

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C: the work stopped early and can be resumed


class HarnessGroup(click.Group):
    """The exit codes, decided here only: a UserError anywhere below is one message and exit 2; work
    stopped by Ctrl-C / SIGTERM (a KeyboardInterrupt, or an Outcome "interrupted" from a command) is 130."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UserError as e:
            echo(f"error: {e}", err=True)
            ctx.exit(EXIT_BAD_INPUT)
        except KeyboardInterrupt:
            ctx.exit(EXIT_INTERRUPTED)


def exit_if_interrupted(status: str) -> None:
    if status == "interrupted":
        sys.exit(EXIT_INTERRUPTED)


def where_keywords(where) -> dict[str, Any]:
    """The shared flags (one `experiment.Where`) as the Python API's keywords."""
    return {"db": where.db, "out": where.out, "address": where.address, "storage_path": where.storage_path,
            "pages_every": where.pages_every_s, "tensorboard": where.tensorboard, "mlflow": where.mlflow}


family_option = click.option(
    "--family", multiple=True, metavar="[MODEL=]FAMILY",
    help="the recipe family (vit | swin | resnet | efficientnet) of a timm model harness cannot tell from its "
         "architecture (repeatable; FAMILY alone when one model runs; docs/models.md)")


@click.group(cls=HarnessGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--plugin", "plugin_refs", multiple=True, metavar="MODULE|FILE.py",
              help="import a plugin that registers models, datasets or recipes (repeatable); installed "
                   "`harness.plugins` entry points load by themselves")
def main(plugin_refs: tuple[str, ...]) -> None:
    """harness: which training recipe does this architecture need, and how much does it matter?"""
    from harness import plugins

    plugins.load_entry_points()
    plugins.load(plugin_refs)


@main.command()
@click.option("--model", default=None, help="registry name (see `harness models`); required unless --resume")
@click.option("--recipe", default="fitted", show_default=True,
              help="registry name, fitted to this run (NAME@published: the source's values as published); "
                   "'fitted' = the model family's own ('tuned' also works); or FILE.yaml, a recipe file (a benchmark's or sweep's "
                   "recipes/recommended-*.yaml), used as written: not refitted, --batch-size rescales its lr")
@data_options()
@click.option("--epochs", type=EPOCHS, default=None, help="[default: 10; with --resume: the checkpoint's; another N "
              "stretches its lr schedule to N epochs]")
@click.option("--batch-size", type=BATCH, default=None, help="images per step [default: the recipe's]")
@click.option("--seed", type=WHOLE, default=0, show_default=True)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a recipe field (repeatable)")
@db_option
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model")
@click.option("--pretrained", is_flag=True, help="start from timm's own weights, read from the local Hugging Face cache "
              "(not downloaded: refused when they are not there)")
@click.option("--pretrained-file", type=click.Path(path_type=Path), default=None, help="start from local weights")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None,
              help="default: checkpoints/run-<id>/")
@click.option("--checkpoint-every", type=EVERY_N, default=0, show_default=True, help="keep epoch_N.pt every N epochs; 0 = only last/best")
@click.option("--max-hours", type=HOURS, default=None, help="stop with a checkpoint after this much wall time")
@click.option("--resume", type=click.Path(path_type=Path), default=None, help="continue from a checkpoint (its config is used)")
@click.option("--threads", type=THREADS, default=None, help="torch CPU threads")
@tracker_options("dashboards/tensorboard")
@family_option
def train(model: str, recipe: str, data_opts: dict,
          epochs: int | None, batch_size: int | None, seed: int, sets: tuple[str, ...], db: str, device: str, compile_: bool,
          pretrained: bool,
          pretrained_file: Path | None, checkpoint_dir: Path | None, checkpoint_every: int, max_hours: float | None,
          resume: Path | None, threads: int | None, tensorboard: bool, mlflow: str | None, family: tuple[str, ...]) -> None:
    """Train one model with one recipe; every epoch goes to the results database."""
    from harness import api

    api.train(model, recipe=recipe, **{("data" if k == "data_name" else k): v for k, v in data_opts.items()},
              epochs=epochs, batch_size=batch_size, seed=seed, sets=parse_sets(sets), family=family or None, db=db,
              device=device, compile=compile_, pretrained=pretrained, pretrained_file=pretrained_file,
              checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, max_hours=max_hours, resume=resume,
              threads=threads, echo=echo,
              mlflow=mlflow, tensorboard=Path("dashboards") / "tensorboard" if tensorboard else None)


@main.command()
@click.option("--image-size", type=PIXELS, default=32, show_default=True,
              help="size the params/GFLOPs are counted at (32: a shipped table, instant; another size: counted on "
                   "torch's meta device, a few seconds)")
def models(image_size: int) -> None:
    """The model registry: name, family, parameters, forward GFLOPs at --image-size; any other timm name
    also runs (docs/models.md)."""
    from harness.model_listing import describe_registry

    for line in describe_registry(image_size, width=TERMINAL_WIDTH):
        echo(line)


@main.group(invoke_without_command=True)
@click.pass_context
def recipes(ctx: click.Context) -> None:
    """Every recipe's settings side by side (`harness recipes show NAME` for one, with its source)."""
    if ctx.invoked_subcommand is None:
        from harness.recipes import published_table

        echo("Published values (the sources' units; `harness recipes show NAME` fits one to a run):")
        echo(published_table(width=TERMINAL_WIDTH))


@recipes.command("show")
@click.argument("name")
@click.option("--model", default=None, help="fit for this model's family (with NAME fitted) [default: vit_base]")
@data_options()
@click.option("--epochs", type=EPOCHS, default=12, show_default=True, help="the run to fit to")
@click.option("--batch-size", type=BATCH, default=64, show_default=True, help="the run's batch size")
def recipes_show(name: str, model: str | None, data_opts: dict, epochs: int, batch_size: int) -> None:
    """One recipe as published (with its source) and fitted to a run: the lr, warmup and strengths it
    will actually use, and the rule behind each."""
    from harness.specs import describe_fit

    for line in describe_fit(name, model=model or "vit_base", data=make_data_spec(**data_opts), epochs=epochs,
                             batch_size=batch_size):
        echo(line)


@main.command()
@click.argument("grid", required=False, type=click.Path(path_type=Path))
@click.option("--models", default=None, help="all | comma list (resnet50,vit_base,...) [default: the grid file's]")
@click.option("--recipes", default=None,
              help="comma list: recipe names (fitted to the run; NAME@published as published), 'fitted' = each "
                   "model's own ('tuned' also works), 'published' = it as published [default: naive,fitted]")
@click.option("--epochs", type=EPOCHS, default=None, help="[default: the grid file's]")
@click.option("--seeds", type=SEEDS_OR_AUTO, default=None,
              help="seeds per model x recipe: N (0..N-1), or auto: 2, then more for a model whose verdict is undecided, "
                   "up to 5 [default: the grid file's, auto]")
@click.option("--batch-size", type=BATCH, default=None,
              help="one batch size for every recipe (the same updates per run) [default: the grid file's, 64]")
@click.option("--data", "data_name", default=None, help="dataset name [default: the grid file's, digits]")
@click.option("--image-size", type=PIXELS, default=None, help="pixels per side [default: the grid file's]")
@click.option("--scale", type=OneOf(["auto", "tiny", "full"]), default=None,
              help="auto: full models on CUDA, same-family CPU stand-ins otherwise [default: the grid file's, auto]")
@click.option("--concurrency", type=AT_ONCE, default=None, help="trials at once [default: the grid file's]")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a recipe field in every run (repeatable)")
@click.option("--lrs", default=None, help="an lr axis: multipliers of each recipe's own lr (x0.1,x0.3,x1,x3,x10), "
              "absolute lrs at the run's batch (1e-4,3e-4,1e-3), or default (= x0.1,x0.3,x1,x3,x10); adds the lr "
              "sensitivity table and page [default: the grid file's; none = each recipe at its own lr]")
@where_options(out_what="the dashboards and the before/after table",
               storage_layout="<path>/benchmark-<random>, named in the experiment's row")
@click.option("--resume", is_flag=True, help="continue the interrupted benchmark of this grid's name: finished runs "
              "are kept, interrupted ones continue from their checkpoints, missing ones start")
@pretrained_options
@family_option
def benchmark(grid: Path | None, models: str | None, recipes: str | None, epochs: int | None, seeds: int | str | None,
              batch_size: int | None, data_name: str | None, image_size: int | None, scale: str | None, concurrency: int | None,
              sets: tuple[str, ...], lrs: str | None, where, resume: bool, pretrained: bool,
              pretrained_files: tuple[str, ...], family: tuple[str, ...]) -> None:
    """Models x recipes x seeds through Ray Tune, then the before/after table and dashboards.

    GRID is a benchmark YAML (default benchmarks/naive_vs_recipe.yaml); flags override its fields.
    """
    from harness import api

    result = api.benchmark(grid, models=models, recipes=recipes, epochs=epochs, seeds=seeds, batch_size=batch_size,
                           data=data_name, image_size=image_size, scale=scale, concurrency=concurrency,
                           sets=parse_sets(sets), lrs=lrs, family=family or None, resume=resume, pretrained=pretrained,
                           pretrained_files=pretrained_files, echo=echo, **where_keywords(where))
    exit_if_interrupted(result.status)


@main.command()
@click.option("--model", required=True, help="the model whose recipe is taken apart (see `harness models`)")
@click.option("--recipe", default="fitted", show_default=True, help="the end of the ladder, fitted to the run")
@click.option("--mode", type=OneOf(["add", "drop", "both"]), default="add", show_default=True,
              help="add: naive + one ingredient per rung; drop: full recipe minus one; both")
@click.option("--steps", default=None, help="ingredients in order, comma-separated [default: every one the recipe changes]")
@click.option("--seeds", type=SEEDS, default=1, show_default=True, help="seeds per rung (>= 2: paired bootstrap intervals)")
@click.option("--epochs", type=EPOCHS, default=6, show_default=True, help="the budget every rung trains for")
@click.option("--batch-size", type=BATCH, default=64, show_default=True, help="one batch size on every rung")
@data_options(image_size=16)
@click.option("--scale", type=OneOf(["auto", "tiny", "full"]), default="auto", show_default=True,
              help="auto: the full model on CUDA, its same-family CPU stand-in otherwise")
@click.option("--concurrency", type=AT_ONCE, default=2, show_default=True, help="runs at once")
@where_options(out_what="the waterfall, the table and the dashboards",
               storage_layout="<path>/ablate-<random>, named in the experiment's row")
@click.option("--resume", is_flag=True, help="continue the interrupted ablation of this model (the same flags)")
@pretrained_options
@family_option
def ablate(model: str, recipe: str, mode: str, steps: str | None, seeds: int, epochs: int, batch_size: int,
           data_opts: dict, scale: str, concurrency: int, where, resume: bool, pretrained: bool,
           pretrained_files: tuple[str, ...], family: tuple[str, ...]) -> None:
    """Naive -> a model's fitted recipe one ingredient at a time: which one matters, at this budget."""
    import torch

    from harness.ablate import resolve_ablation, run_ablation
    from harness.api import parse_families
    from harness.models import declared_families

    data = make_data_spec(**data_opts)
    with declared_families(parse_families(family or None, models=[model])):
        ab = resolve_ablation(model, recipe=recipe, steps=steps, mode=mode, seeds=seeds, epochs=epochs, batch_size=batch_size,
                              data=data, scale=scale, cuda=torch.cuda.is_available(),
                              pretrained=parse_pretrained(pretrained, pretrained_files, models=[model]))
        exit_if_interrupted(run_ablation(ab, where.check(), concurrency=concurrency, echo=echo, resume=resume).status)


@main.command()
@db_option
@out_option(what="the HTML pages")
@click.option("--compare", type=RUN_ID, multiple=True, metavar="RUN_ID",
              help="also overlay these runs in compare.html (repeatable; `--compare 3 --compare 7` or `--compare 3 7`)")
@click.option("--watch", is_flag=True,
              help="while an experiment in the database runs (another process writing it), rewrite the pages every "
                   "--every seconds with a 'running' banner (open tabs reload themselves); ends by itself when none "
                   "runs, or on Ctrl-C, with the final pages")
@click.option("--every", type=SECONDS, default=int(PAGES_EVERY_S), show_default=True, help="seconds between rewrites with --watch")
@click.option("--all", "all_", is_flag=True, help="rewrite every page, changed or not (default: only the pages "
              "whose rows changed since they were written, and the index)")
@click.argument("more_ids", nargs=-1, type=RUN_ID, metavar="[RUN_ID]...")
def report(db: str, out: Path, compare: tuple[int, ...], watch: bool, every: int, all_: bool,
           more_ids: tuple[int, ...]) -> None:
    """Dashboards (Plotly HTML, offline) and before/after tables from the results database."""
    from harness import tables as rep
    from harness.dashboards import write_pages

    ids = [*compare, *more_ids]
    if more_ids and not compare:
        raise UserError("RUN_ID", list(more_ids), "Run ids go after --compare, e.g. `harness report --compare 3 7`.")
    if watch:
        from harness.dashboards import watch as watch_pages

        watch_pages(db, out, every=every, compare=ids or None, echo=echo)
    written = write_pages(db, out, compare=ids or None, all=all_)  # the final pages: no banner, no reload
    store = rep.open_reader(db)
    try:
        latest = rep.latest_benchmark(store)
        if latest is not None:
            table = rep.before_after(store, latest)
            # The title names the table's accuracy column: test, or val where the data has no test split.
            flagged = (rep.splits_of(table["split"]) or "test") != "test"
            echo(f"latest benchmark (experiment {latest}), test acc %{' (val where flagged)' if flagged else ''}:")
            echo(rep.to_text(rep.format_before_after(table)))
            echo(f"before/after: {out / f'before_after-{latest}.html'} (+ .md, .csv)")
    finally:
        store.close()
    if ids:
        echo(f"compare: {written.path} (runs {', '.join(map(str, ids))})")
    echo(f"pages: {len(written.written)} written, {written.unchanged} unchanged since their last write"
         + (" (nothing in the database changed)" if not written.written else "") + "; --all rewrites every one")
    echo(f"dashboards: {out / 'index.html'} (open it in a browser; works offline)")


@main.command()
@click.argument("run_id", type=RUN_ID)
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="the weights file to write (e.g. model.pth); its .recipe.yaml and .md model card go beside it")
@db_option
@click.option("--storage-path", type=click.Path(path_type=Path), default=DEFAULT_STORAGE, show_default=True,
              help="the --storage-path the run's benchmark, sweep or ablation ran with (its checkpoints are there)")
@click.option("--force", is_flag=True, help="replace the three files if they exist (never the database or the checkpoint)")
def export(run_id: int, out: Path, db: str, storage_path: Path, force: bool) -> None:
    """Hand back a run's trained model: its weights as a timm-loadable state dict, its recipe and a model card."""
    from harness.export import export_run
    from harness.store import check_url

    check_url(db)
    weights, recipe, card = export_run(db, run_id, out, storage_path=storage_path, force=force)
    echo(f"run {run_id}: weights {weights}, recipe {recipe}, model card {card}")
    echo(f"load it: see {card} (timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=...)))")


@main.command()
@click.argument("study", type=click.Path(path_type=Path))
@click.option("--validate", is_flag=True, help="check the study file (names, bounds, resources) and exit")
@click.option("--resume", is_flag=True, help="continue the study of this name: finished trials are kept, unfinished ones continue")
@where_options(out_what="the dashboards, rewritten while the sweep runs",
               storage_layout="<path>/<study name>-<random>, named in the experiment's row")
@click.option("--max-failures", type=RETRIES, default=1, show_default=True, help="retries of a crashing trial, from its last checkpoint")
@click.option("--top", type=ROWS, default=10, show_default=True, help="trials shown in the final table")
@pretrained_options
@click.option("--family", default=None, metavar="FAMILY",
              help="the recipe family of the study's model when harness cannot tell it (a timm name; docs/models.md)")
def sweep(study: Path, validate: bool, resume: bool, where, max_failures: int, top: int, pretrained: bool,
          pretrained_files: tuple[str, ...], family: str | None) -> None:
    """Run an Optuna study through Ray Tune with ASHA; every trial and epoch goes to the database."""
    from harness import api

    if validate:  # no torch, timm or Ray: the study file alone, in about a second
        for line in api.sweep(study, validate=True, family=family, address=where.address):
            echo(line)
        return
    result = api.sweep(study, resume=resume, family=family, max_failures=max_failures, top=top, pretrained=pretrained,
                       pretrained_files=pretrained_files, echo=echo, **where_keywords(where))
    exit_if_interrupted(result.status)


@main.command()
@click.option("--model", required=True, help="registry name (see `harness models`)")
@click.option("--recipe", default="fitted", show_default=True, help="registry name, or 'fitted' for the model family's own")
@data_options()
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a recipe field (repeatable)")
@click.option("--scale", type=OneOf(["auto", "tiny", "full"]), default="auto", show_default=True,
              help="auto: the CPU stand-in on a CPU, the named model on a GPU; tiny: always the stand-in; full: the named model")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--seed", type=WHOLE, default=0, show_default=True)
@click.option("--threads", type=THREADS, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
@click.option("--overfit-steps", type=OVERFIT_STEPS, default=200, show_default=True, help="step budget of the overfit test")
@click.option("--lr-steps", type=LR_STEPS, default=100, show_default=True, help="steps of the lr range test")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON (progress goes to stderr)")
@db_option
@out_option("dashboards/doctor", what="the lr range test's Plotly HTML")
@family_option
def doctor(model: str, recipe: str, data_opts: dict,
           sets: tuple[str, ...], scale: str, device: str, seed: int, threads: int | None, overfit_steps: int,
           lr_steps: int, as_json: bool, db: str, out: Path, family: tuple[str, ...]) -> None:
    """The ViT tuning checklist's pre-training checks (shapes, gradients, overfit 32 images, lr range
    test) and the recipe lint of the ViT/Swin failure write-up's debugging checklist. Exit 0: no FAIL;
    1: a check FAILed; 2: bad input."""
    import json
    import time

    from harness import doctor as doc
    from harness.api import parse_families
    from harness.files import check_out_dir
    from harness.models import ModelName
    from harness.store import check_url, shown_url

    t0, cpu0 = time.monotonic(), time.process_time()
    check_url(db)  # everything is validated before anything runs or is written
    check_out_dir(out, what="the HTML", default="dashboards/doctor")
    log = (lambda s: echo(s, err=True)) if as_json else echo  # with --json, stdout holds the JSON alone
    model = ModelName(model, parse_families(family or None, models=[model]).get(model))  # the family travels with the name
    done = doc.checkup(model, recipe, make_data_spec(**data_opts), overrides=parse_sets(sets), scale=scale, device=device,
                       seed=seed, threads=threads, overfit_steps=overfit_steps, lr_steps=lr_steps, db=db, out=out, log=log)
    if as_json:
        click.echo(json.dumps(done.as_json(db=db, total_s=time.monotonic() - t0, total_cpu_s=time.process_time() - cpu0)))
    else:
        echo(doc.format_table(done.report))
        counts = {s: sum(r.status == s for r in done.report.results) for s in ("PASS", "WARN", "FAIL")}
        echo(f"{counts['FAIL']} FAIL, {counts['WARN']} WARN, {counts['PASS']} PASS in "
             f"{time.monotonic() - t0:.0f}s ({time.process_time() - cpu0:.0f}s CPU)")
        echo(f"results: experiment {done.experiment_id} (kind doctor) in {shown_url(db)}; lr range curve: {done.html}")
    if done.exit_code:
        sys.exit(done.exit_code)


if __name__ == "__main__":
    sys.exit(main())
