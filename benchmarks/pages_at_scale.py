"""Pages at the scale of a month of work (issue 22): a generated results database of `--runs` runs x
`--epochs` epochs, then how long the pages take.

The database is written through the store's own writer (`Store.create_experiment`, `create_run`,
`log_epoch`, `save_evaluation`, `finish_run`, `finish_experiment`), the same rows a grid's driver
writes: experiments of `RUNS_PER_EXPERIMENT` runs, alternately benchmarks (2 models x 2 recipes x 5
seeds) and sweeps (20 trials over lr, each with its Optuna trial in the same database, as a real
sweep leaves it). The newest experiment is left running, its last run one epoch short. Optionally one
sweep of `--big-sweep` trials (its page must still open in a browser in seconds).

Then, timed (`dashboards.write_pages`, what `harness report` runs):
1. the first full write (every page), its page count and the folder's size;
2. an unchanged re-run (target: under 5 s);
3. one new epoch on the running run, then the re-run (target: under 2 s of page work), and the same
   for the live writer's scope (`LivePages`: that experiment's pages and the index only);
4. with `--big-sweep` and chromium installed: the big sweep's page opened in headless Chromium.

    uv run python benchmarks/pages_at_scale.py                     # 10,000 runs x 20 epochs (minutes to generate)
    uv run python benchmarks/pages_at_scale.py --runs 500 --db sqlite:////tmp/p.db --out /tmp/pages

The table goes to stdout and to `--results` (default benchmarks/results/pages_at_scale.md) with the
machine's load; an existing `--db` is reused as it is (generation skipped), so the timings can be rerun.
"""

from __future__ import annotations

import argparse
import base64
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, command_line, importable_harness, md_table, stamp

importable_harness()

from harness.store import Store, sqlite_path  # noqa: E402

RUNS_PER_EXPERIMENT = 20  # a benchmark of 2 models x 2 recipes x 5 seeds; a sweep of 20 trials
CLASSES = 10  # digits
# The evaluation a finished run stores: per-class accuracy, the confusion matrix and 36 sample images
# (specs.RunSpec.eval_samples' default), each an 8 x 8 PNG as a real digits run stores them.
SAMPLES = 36


def tiny_png() -> str:
    """An 8 x 8 grey PNG, base64: the size of a digits sample."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# Targets from issue 22.
UNCHANGED_TARGET_S = 5.0
NEW_EPOCH_TARGET_S = 2.0


def curve(epochs: int, peak: float, rng: random.Random) -> list[dict[str, float]]:
    """A plausible training curve: accuracy rising to `peak`, losses falling, cosine lr."""
    rows = []
    for e in range(1, epochs + 1):
        f = 1 - math.exp(-3 * e / epochs)
        val = peak * f + rng.uniform(-0.01, 0.01)
        rows.append({"train_loss": 2.3 * (1 - f) + 0.05, "train_acc": min(1.0, val + 0.03), "train_batch_acc": val,
                     "val_loss": 2.3 * (1 - f) + 0.1, "val_acc": val, "val_acc_raw": val,
                     "lr": 1e-3 * 0.5 * (1 + math.cos(math.pi * e / epochs)) + 1e-6, "grad_norm": 1.0 + rng.random(),
                     "epoch_s": 1.0, "images_per_s": 1000.0})
    return rows


def evaluation(peak: float, epoch: int, png: str) -> dict:
    right = round(36 * peak)
    confusion = [[right if i == j else (36 - right) // (CLASSES - 1) for j in range(CLASSES)] for i in range(CLASSES)]
    return {"epoch": epoch, "class_names": [str(i) for i in range(CLASSES)], "per_class_acc": [peak] * CLASSES,
            "confusion": confusion, "samples": [{"png": png, "true": i % CLASSES, "pred": (i + (i % 3 == 0)) % CLASSES}
                                                for i in range(SAMPLES)]}


def params(recipe: str, lr: float, epochs: int, seed: int) -> dict:
    return {"model": "resnet18", "recipe": {"name": recipe, "lr": lr, "batch_size": 64, "warmup_epochs": 1},
            "data": {"name": "digits", "image_size": 32}, "epochs": epochs, "train_images": 1437, "seed": seed}


def generate(db: str, runs: int, epochs: int, big_sweep: int) -> int:
    """The database; returns the id of the run left running (one epoch short)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(db)
    rng = random.Random(0)
    png = tiny_png()
    n_exps = max(1, math.ceil(runs / RUNS_PER_EXPERIMENT))
    running_run = None
    t0 = time.perf_counter()
    plan = [("sweep" if i % 2 else "benchmark", RUNS_PER_EXPERIMENT) for i in range(n_exps)]
    if big_sweep:
        plan.insert(0, ("sweep", big_sweep))
    for i, (kind, n_runs) in enumerate(plan):
        last_exp = i == len(plan) - 1
        name = f"{kind} {i}"
        exp = store.create_experiment(kind=kind, name=name, description=f"generated ({kind})", device="cpu (generated)",
                                      spec="search:\n  lr: {type: loguniform, low: 1.0e-5, high: 1.0e-1}\n" if kind == "sweep" else "")
        trials = []
        for k in range(n_runs):
            if kind == "benchmark":
                model, recipe, seed = ("resnet18", "vit_tiny")[k // 10], ("naive", "vit")[k // 5 % 2], k % 5
                lr = 1e-3
            else:
                model, recipe, seed, lr = "vit_tiny", "vit", 0, 10 ** rng.uniform(-5, -1)
            peak = rng.uniform(0.3, 0.95)
            run = store.create_run(exp, model=model, recipe=recipe, params=params(recipe, lr, epochs, seed), seed=seed,
                                   optuna_trial=k if kind == "sweep" else None)
            rows = curve(epochs, peak, rng)
            left_running = last_exp and k == n_runs - 1
            for e, metrics in enumerate(rows[:-1] if left_running else rows, start=1):
                store.log_epoch(run, e, metrics)
            if left_running:
                running_run = run
                continue
            store.save_evaluation(run, evaluation(peak, epochs, png))
            store.finish_run(run, status="completed", wall_s=float(epochs))
            if kind == "sweep":
                trials.append(optuna.trial.create_trial(
                    params={"lr": lr}, distributions={"lr": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)},
                    value=rows[-1]["val_acc"], intermediate_values={e: r["val_acc"] for e, r in enumerate(rows, start=1)}))
        if kind == "sweep":
            study = optuna.create_study(study_name=name, storage=db, direction="maximize")
            study.add_trials(trials)
        if not last_exp:
            store.finish_experiment(exp, "completed")
        done = sum(n for _, n in plan[:i + 1])
        if i % 10 == 0 or last_exp:
            print(f"  {done} runs in {i + 1} experiments, {time.perf_counter() - t0:.0f} s", flush=True)
    store.close()
    assert running_run is not None
    return running_run


def folder_size(out: Path) -> int:
    return sum(p.stat().st_size for p in out.iterdir() if p.is_file())


def open_in_chromium(page: Path) -> float | None:
    """Seconds headless Chromium takes to load `page` and let Plotly draw (None without chromium)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
               "--dump-dom", page.resolve().as_uri()]
        t0 = time.perf_counter()
        dom = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=True).stdout
        took = time.perf_counter() - t0
    if 'class="main-svg"' not in dom:
        print(f"  warning: no Plotly figure drawn in {page.name}", file=sys.stderr)
    return took


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000, help="runs in the generated database (default 10,000)")
    ap.add_argument("--epochs", type=int, default=20, help="epochs per run (default 20)")
    ap.add_argument("--big-sweep", type=int, default=0, help="also one sweep of this many trials (e.g. 1000; default none)")
    ap.add_argument("--db", default=None, help="database URL (default a new SQLite file in a temp folder); reused if it exists")
    ap.add_argument("--out", type=Path, default=None, help="the pages' folder (default a temp folder; emptied first)")
    ap.add_argument("--results", type=Path, default=RESULTS / "pages_at_scale.md", help="where the table is written")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pages_at_scale-"))
    db = args.db or f"sqlite:///{tmp / 'results.db'}"
    out = args.out or tmp / "dashboards"
    path = sqlite_path(db)
    fresh = path is None or not path.exists()
    from harness import tables as rep
    from harness.dashboards import write_pages

    if fresh:
        print(f"generating {args.runs} runs x {args.epochs} epochs into {db} (through harness.store)", flush=True)
        t0 = time.perf_counter()
        running_run = generate(db, args.runs, args.epochs, args.big_sweep)
        generate_s = time.perf_counter() - t0
    else:
        store = Store(db, create=False)
        running_run = int(store.read_sql("SELECT max(id) AS id FROM runs WHERE status = 'running'").iloc[0]["id"])
        store.close()
        generate_s = math.nan
    store = rep.open_reader(db)
    n_runs = int(store.read_sql("SELECT count(*) AS n FROM runs").iloc[0]["n"])
    n_epochs = int(store.read_sql("SELECT count(*) AS n FROM epochs").iloc[0]["n"])
    running_exp = int(store.read_sql(f"SELECT experiment_id FROM runs WHERE id = {running_run}").iloc[0, 0])
    store.close()
    if out.exists():
        shutil.rmtree(out)
    rows = []

    def timed(what: str, **kw) -> None:
        t0 = time.perf_counter()
        done = write_pages(db, out, **kw)
        took = time.perf_counter() - t0
        rows.append({"step": what, "seconds": round(took, 2), "pages written": len(done.written),
                     "pages unchanged": done.unchanged, "folder MB": round(folder_size(out) / 1e6, 1)})
        print(f"  {what}: {took:.2f} s, {len(done.written)} written, {done.unchanged} unchanged", flush=True)

    timed("first full write")
    timed("unchanged re-run")
    writer = Store(db)
    epoch = int(writer.read_sql(f"SELECT max(epoch) AS e FROM epochs WHERE run_id = {running_run}").iloc[0]["e"]) + 1
    writer.log_epoch(running_run, epoch, curve(epoch, 0.8, random.Random(1))[-1])
    timed("one new epoch, then `harness report`")
    writer.log_epoch(running_run, epoch + 1, curve(epoch + 1, 0.8, random.Random(2))[-1])
    timed("one new epoch, then the live writer's scope", live=True, experiments=[running_exp])
    writer.close()
    chromium = None
    if args.big_sweep:
        chromium = open_in_chromium(out / "sweep-1.html")
        if chromium is not None:
            rows.append({"step": f"sweep page of {args.big_sweep} trials opened in headless Chromium",
                         "seconds": round(chromium, 2), "pages written": "", "pages unchanged": "",
                         "folder MB": round((out / "sweep-1.html").stat().st_size / 1e6, 2)})
    unchanged_s, epoch_s = rows[1]["seconds"], rows[2]["seconds"]
    text = (f"# Pages at scale\n\n`{command_line('pages_at_scale.py', sys.argv[1:] if argv is None else argv)}`\n\n"
            f"{n_runs} runs, {n_epochs} epochs (generated in {generate_s:.0f} s through harness.store); {stamp()}; "
            f"{os.cpu_count()} CPUs.\n\n"
            + md_table(rows, ["step", "seconds", "pages written", "pages unchanged", "folder MB"])
            + f"\n\nTargets (issue 22): unchanged re-run under {UNCHANGED_TARGET_S:g} s "
            f"({'met' if unchanged_s < UNCHANGED_TARGET_S else 'NOT met'}), one new epoch under {NEW_EPOCH_TARGET_S:g} s "
            f"of page work ({'met' if epoch_s < NEW_EPOCH_TARGET_S else 'NOT met'}).\n")
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    print(f"written: {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
