"""`harness export RUN_ID --out PATH`: a run's trained model handed back, as a user loads it.

Three files: PATH, the run's final weights as a plain state dict (the weights its test accuracy was
measured on: the EMA's when the recipe keeps one; no optimizer), loadable with timm's own path
(`timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH, num_classes=K))`, the
classifier included); PATH's `.recipe.yaml`, the recipe the run trained with (`harness train --recipe`);
and PATH's `.md`, a short model card: what ran on which data and splits, the test accuracy with its
interval, how to load it, and where it came from.

The weights come from the run's checkpoint: a Ray trial's latest one in its experiment's Ray folder
(found by the trial id its `result.json` carries), a `harness train` run's `--checkpoint-dir`.

Export never overwrites: the three paths are worked out first and refused (exit 2, naming the path)
when one exists (unless `--force`), when two are one file (`--out w.md`), or when one is the results
database or the checkpoint being read; then all three are written to temp files and moved into place.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

from harness.errors import UserError


def _trial_checkpoint(exp_dir: Path, trial_id: str) -> Path | None:
    """The latest checkpoint's last.pt of the Ray trial `trial_id` under `exp_dir` (None if absent)."""
    for result in exp_dir.glob("*/result.json"):
        try:
            first = result.open().readline()
            if json.loads(first).get("trial_id") != trial_id:
                continue
        except (OSError, ValueError):
            continue
        done = sorted(p for p in result.parent.glob("checkpoint_*/last.pt"))
        return done[-1] if done else None
    return None


def find_checkpoint(run: dict, experiment: dict, *, storage_path: Path) -> Path:
    """The last.pt holding `run`'s final weights; UserError saying where it looked and the fix."""
    from harness.engine.state import ray_folder

    rid = run["id"]
    if run.get("trial_id"):
        exp_dir = Path(storage_path).resolve() / ray_folder(experiment, ray_name=experiment["name"]
                                                            if experiment["kind"] == "sweep" else None)
        found = _trial_checkpoint(exp_dir, run["trial_id"]) if exp_dir.is_dir() else None
        if found is None:
            raise UserError("--storage-path", str(storage_path), f"No checkpoint of run {rid} (Ray trial {run['trial_id']}) in "
                            f"{exp_dir}; pass the --storage-path its {experiment['kind']} ran with.")
        return found
    # `harness train` keeps its checkpoints in --checkpoint-dir, or checkpoints/run-<id> where it ran (runner.py)
    folder = Path((run["params"] or {}).get("checkpoint_dir") or Path("checkpoints") / f"run-{rid}")
    if not (folder / "last.pt").is_file():
        raise UserError("RUN_ID", rid, f"Run {rid} kept no checkpoint in {folder}; export from the folder it was trained "
                        "in, or train with `harness train --checkpoint-dir DIR`.")
    return folder / "last.pt"


def final_weights(ckpt: dict) -> tuple[dict, str]:
    """The weights the run's test accuracy was measured on, and which they are."""
    if ckpt.get("ema") is not None:  # timm's ModelEmaV3 keeps the model under `module.`
        return {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}, "the EMA of the final epoch's weights"
    return ckpt["model"], "the final epoch's weights"


def load_call(spec: Any, path: Path, num_classes: int) -> str:
    """The one line that builds the model with these weights, through timm's own loading path."""
    from harness.models import get_model_entry

    entry = get_model_entry(spec.model)
    kwargs = {**entry.fixed, **entry.size_kwargs(spec.data.image_size), "num_classes": num_classes}
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return (f"timm.create_model({entry.timm_name!r}, pretrained=True{args}, "
            f"pretrained_cfg_overlay=dict(file={str(path)!r}, num_classes={num_classes}))")


def output_paths(out: Path, *, db: str, force: bool = False) -> list[Path]:
    """The three files `export_run` writes for `--out out` (weights, recipe, model card), checked before
    anything is read or written: none may be the results database (or its journal files), two may not be
    one file (`--out w.md` is also the card's path), and none may exist unless `force`."""
    from harness.store import sqlite_path

    out = Path(out)
    if out.is_dir():
        raise UserError("--out", str(out), "That is a folder; give the weights file's path, e.g. model.pth.")
    paths = [out, out.with_suffix(".recipe.yaml"), out.with_suffix(".md")]
    real = [Path(os.path.realpath(p)) for p in paths]
    if len(set(real)) < len(real):
        raise UserError("--out", str(out), f"The weights, the recipe and the model card would be one file "
                        f"({', '.join(map(str, paths))}); give a weights name with its own suffix, e.g. model.pth.")
    db_file = sqlite_path(db)
    if db_file is not None:
        kept = {Path(os.path.realpath(db_file)).with_name(Path(os.path.realpath(db_file)).name + tail)
                for tail in ("", "-wal", "-shm", "-journal")}
        for p, r in zip(paths, real):
            if r in kept:
                raise UserError("--out", str(out), f"{p} is the results database the run is read from; write the "
                                "export elsewhere, e.g. model.pth.")
    if not force:
        for p in paths:
            if p.exists():
                raise UserError("--out", str(out), f"{p} already exists; export never overwrites a file: name another "
                                "path, remove it, or pass --force to replace the three files.")
    return paths


def export_run(db: str, run_id: int, out: Path, *, storage_path: Path, force: bool = False) -> list[Path]:
    """Write the run's weights, recipe and model card next to `out`; the three paths. Bad input ->
    UserError before anything is written; an existing file is refused unless `force` (`output_paths`).
    The three are written to temp files first and then moved into place, so a failure leaves none."""
    import torch

    from harness import tables as rep
    from harness.files import atomic_path
    from harness.recipe_file import recipe_yaml
    from harness.specs import RunSpec
    from harness.store import shown_url
    from harness.tables.stats import wilson
    from harness.train import load_checkpoint

    out, recipe_path, card_path = output_paths(out, db=db, force=force)
    store = rep.open_reader(db)
    try:
        runs = rep.read_runs(store, run_ids=[int(run_id)])
        if runs.empty:
            raise UserError("RUN_ID", run_id, f"No run {run_id} in {shown_url(db)}; `harness report` lists the experiments, "
                            "the pages their runs.")
        run = runs.iloc[0].to_dict()
        experiment = rep.read_experiments(store).set_index("id").loc[run["experiment_id"]].to_dict()
        experiment["id"] = run["experiment_id"]
    finally:
        store.close()
    if run["status"] not in ("completed", "stopped", "time_limit"):
        raise UserError("RUN_ID", run_id, f"Run {run_id} is {run['status']}: its weights are no trained model; export a "
                        "completed run.")
    spec = RunSpec.model_validate(run["params"])
    source = find_checkpoint(run, experiment, storage_path=storage_path)
    if source.resolve() in {p.resolve() for p in (out, recipe_path, card_path)}:
        raise UserError("--out", str(out), f"{source} is the run's own checkpoint, which the export reads; write elsewhere.")
    ckpt = load_checkpoint(source, field_name="RUN_ID")
    weights, which = final_weights(ckpt)
    head = next((v for k, v in weights.items() if k.endswith(("head.weight", "fc.weight", "classifier.weight"))
                 and v.ndim == 2), None)
    num_classes = int(head.shape[0]) if head is not None else int(ckpt["config"].get("num_classes") or 0)

    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(dict(weights), buf)
    digest = hashlib.sha256(buf.getvalue()).hexdigest()
    recipe_text = recipe_yaml(spec.recipe, comment=[f"the recipe of run {run_id} ({spec.label()}), exported with "
                                                    f"its weights: {out.name}"])
    test = "not scored (a run from before test splits)"
    if run.get("n_test") and run.get("test_acc") == run.get("test_acc"):  # not NaN
        n = int(run["n_test"])
        lo, hi = wilson(round(run["test_acc"] * n), n)
        test = (f"{100 * run['test_acc']:.1f}% of {n} held-out test images (95% Wilson interval "
                f"{100 * lo:.1f}–{100 * hi:.1f}%: image noise only, one run, one seed)")
    lines = [
        f"# {spec.label()}, trained by harness (run {run_id})", "",
        f"- **Weights**: `{out.name}`: {which}, a plain state dict (no optimizer); sha256 `{digest[:16]}…`.",
        f"- **Load**: `{load_call(spec, out, num_classes)}`",
        f"- **Recipe**: `{recipe_path.name}` ({spec.recipe.label()}); train it again with "
        f"`harness train --model {spec.model} --recipe {recipe_path}`.",
        f"- **Data**: {spec.data.name} at {spec.data.image_size} px, {num_classes} classes; validation "
        f"{spec.data.val_fraction:g} and test {spec.data.test_fraction:g} of the images held out "
        "(validation chose, test reports).",
        f"- **Test accuracy**: {test}.",
        f"- **Run**: {run['status']} after {int(run['epochs_done'])} of {spec.epochs} epochs, seed {spec.seed}; "
        f"best validation accuracy {100 * (run.get('best_val_acc') or 0):.1f}% at epoch {run.get('best_epoch')}.",
        f"- **Made by**: experiment {experiment['id']} ({experiment['kind']} {experiment['name']!r}) in {shown_url(db)}, "
        f"harness {experiment.get('code_version') or '?'}, on {experiment.get('device') or '?'}.", ""]
    # Each file written whole beside its place, then all three renamed into place (atomic_path's os.replace).
    with atomic_path(out) as w, atomic_path(recipe_path) as r, atomic_path(card_path) as c:
        w.write_bytes(buf.getvalue())
        r.write_text(recipe_text, encoding="utf-8")
        c.write_text("\n".join(lines), encoding="utf-8")
    return [out, recipe_path, card_path]
