"""Pretrained weights made on this machine, for the fine-tuning benchmark (benchmarks/finetune.yaml).

    uv run python benchmarks/pretrain.py                      # vit_tiny, the stand-in the grid fine-tunes
    uv run python benchmarks/pretrain.py --models vit_tiny,resnet18 --epochs 8

No weights can be downloaded here, so each stand-in is trained on a *source* task, a different data set
from the target: the synthetic set (20 classes of generated images, at the target's 32 px), with its
family's recipe, through `harness train`; the trained run is handed back with `harness export` (a plain
state dict timm loads, its recipe and model card) as benchmarks/weights/<model>-synthetic20.pth.
`benchmarks/finetune.yaml` then fine-tunes it on digits, a task the weights never saw.

What this stands for and what it does not: it is the *situation* of fine-tuning (a body trained on
other images, a new head, the fine-tuning recipe against naive settings from the same weights), not
ImageNet pretraining: a few minutes of synthetic shapes teach far less than 1.2M photographs, so the
size of any fine-tuning gain here says nothing about the size on real pretrained weights.

It also writes the two recipes of the fine-tuning write-up's before/after for ViT, fitted to the grid's
budget: benchmarks/weights/vit-ft-writeup-before.yaml (lr 1e-4, cosine from step 0, no warmup) and
-after.yaml (lr 5e-4 with warmup), both from the family's fine-tuning recipe (vit_ft).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "benchmarks" / "weights"
SOURCE = {"name": "synthetic", "image_size": 32, "num_classes": 20, "train_size": 2000}


def pretrain(model: str, epochs: int, db: str, ckpt: Path) -> Path:
    """Train `model` on the source task (harness's own run, recorded in `db`) and export it; the weights' path."""
    from harness.datasets import DataSpec
    from harness.export import export_run
    from harness.runner import run_and_record
    from harness.specs import resolve_run

    spec = resolve_run(model=model, recipe="fitted", data=DataSpec(**SOURCE), epochs=epochs, checkpoint_dir=ckpt / model)
    run_and_record(spec, db=db)
    import sqlalchemy as sa

    engine = sa.create_engine(db)
    with engine.connect() as c:
        run_id = c.execute(sa.text("SELECT max(id) FROM runs")).scalar_one()
    engine.dispose()
    path = WEIGHTS / f"{model}-synthetic{SOURCE['num_classes']}.pth"
    for written in export_run(db, run_id, path, storage_path=ckpt):
        print(f"  {written}")
    return path


def writeup_recipes(grid: Path) -> list[Path]:
    """The write-up's before/after as recipe files, vit_ft fitted to the grid's budget, then its changes."""
    from harness.datasets import DataSpec, train_images
    from harness.recipe_file import write_recipe_file
    from harness.recipes import Budget, resolve_recipe, with_overrides

    spec = yaml.safe_load(grid.read_text())
    budget = Budget(spec["epochs"], train_images(DataSpec(**spec["data"])), spec["batch_size"])
    ft = resolve_recipe("vit_ft", family="vit", pretrained=True, budget=budget)
    # The write-up states its lrs at its own batch; they are set here per recipe's lr_base_batch (256), as stated.
    before = with_overrides(ft, {"lr": 1e-4, "warmup_epochs": 0})
    after = with_overrides(ft, {"lr": 5e-4})  # the fitted warmup kept: "do not start the cosine decay at step 0"
    paths = []
    for tag, recipe, what in (("before", before, "lr 1e-4, cosine from step 0, no warmup"),
                              ("after", after, f"lr 5e-4, {after.warmup_epochs:g} warmup epochs, then cosine")):
        path = WEIGHTS / f"vit-ft-writeup-{tag}.yaml"
        write_recipe_file(recipe.model_copy(update={"name": f"vit_ft_writeup_{tag}"}), path, comment=[
            f"The fine-tuning write-up's {tag} (61-class plant-disease set): {what}; vit_ft (MAE fine-tuning) "
            f"fitted to {grid.name}'s budget ({budget.epochs} epochs, batch {budget.batch_size}) otherwise."])
        paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vit_tiny", help="comma list of registry names [default: vit_tiny]")
    p.add_argument("--epochs", type=int, default=6, help="source-task epochs [default: 6]")
    args = p.parse_args()
    WEIGHTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pretrain-") as tmp:
        db = f"sqlite:///{Path(tmp) / 'pretrain.db'}"
        for model in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"{model}: {args.epochs} epochs on {SOURCE}")
            pretrain(model, args.epochs, db, Path(tmp))
    for path in writeup_recipes(ROOT / "benchmarks" / "finetune.yaml"):
        print(f"recipe: {path}")
    print(f"weights in {WEIGHTS}; next: uv run harness benchmark benchmarks/finetune.yaml")


if __name__ == "__main__":
    main()
