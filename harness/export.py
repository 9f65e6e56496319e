"""`harness export RUN_ID --out PATH`: a run's trained model handed back, as a user loads it.

Three files: PATH, the run's final weights as a plain state dict (the weights its test accuracy was
measured on: the EMA's when the recipe keeps one; no optimizer), loadable with timm's own path
(`timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=PATH, num_classes=K))`, the
classifier included); PATH's `.recipe.yaml`, the recipe the run trained with (`harness train --recipe`);
and PATH's `.md`, a short model card: what ran on which data and splits, the test accuracy with its
interval, how to load it, and where it came from.

The weights come from the run's checkpoint: a Ray trial's latest one in its experiment's Ray folder
(found by the trial id its `result.json` carries), a `harness train` run's `--checkpoint-dir`.
"""

from __future__ import annotations

import hashlib
import json
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


def export_run(db: str, run_id: int, out: Path, *, storage_path: Path) -> list[Path]:
    """Write the run's weights, recipe and model card next to `out`; the three paths. Bad input ->
    UserError before anything is written."""
    import torch

    from harness import tables as rep
    from harness.files import write_atomic, write_text_atomic
    from harness.recipe_file import write_recipe_file
    from harness.specs import RunSpec
    from harness.store import shown_url
    from harness.tables.stats import wilson
    from harness.train import load_checkpoint

    out = Path(out)
    if out.is_dir():
        raise UserError("--out", str(out), "That is a folder; give the weights file's path, e.g. model.pth.")
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
    ckpt = load_checkpoint(find_checkpoint(run, experiment, storage_path=storage_path), field_name="RUN_ID")
    weights, which = final_weights(ckpt)
    head = next((v for k, v in weights.items() if k.endswith(("head.weight", "fc.weight", "classifier.weight"))
                 and v.ndim == 2), None)
    num_classes = int(head.shape[0]) if head is not None else int(ckpt["config"].get("num_classes") or 0)

    recipe_path, card_path = out.with_suffix(".recipe.yaml"), out.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda f: torch.save(dict(weights), f))
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    write_recipe_file(spec.recipe, recipe_path, comment=[f"the recipe of run {run_id} ({spec.label()}), exported with "
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
    write_text_atomic(card_path, "\n".join(lines))
    return [out, recipe_path, card_path]
