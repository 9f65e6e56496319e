"""JPEG decoding of an imagefolder against training speed: do harness.data's loader workers keep up?

    uv run python benchmarks/loader.py                      # 512 JPEGs of 500x375, decoded to 224 px
    uv run python benchmarks/loader.py --workers 1,2,4,8    # images/s at each worker count

Writes n JPEGs of ImageNet's typical size and quality, reads them through `harness.data`'s
FolderSplit (PIL decode, resize, centre crop in DataLoader workers, persistent across epochs,
pinned memory on CUDA) and reports images/s per worker. From that it works out how many workers
each model needs to keep its training speed: this device's benchmarks/results/throughput-<gpu>.csv
(harness_img_s at the same size) when one exists, else timm's published RTX 3090 figures.
Results: benchmarks/results/loader-<device>.md.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, as a script or from the tests
import _common as common  # noqa: E402

common.importable_harness()

from harness import data as data_mod  # noqa: E402
from harness.process import resolve_device  # noqa: E402

# timm's published RTX 3090 AMP training figures (results/benchmark-train-amp-*-rtx3090.csv in the timm
# repository), img/s at 224 px: the training rates to keep up with when this device has no table yet.
TIMM_RTX3090 = {"resnet50": 1218.0, "vit_base": 393.0, "swin_tiny": 649.0}
JPEG_SIZE = (500, 375)  # ImageNet's typical (most common) image size, w x h
JPEG_QUALITY = 90
EPOCHS = 3  # epoch 1 starts the workers; persistent workers serve epochs 2 and 3 (the ones counted)


def make_jpeg_folder(root: Path, n: int, size: tuple[int, int] = JPEG_SIZE) -> None:
    """n JPEGs of ImageNet's typical size and quality: smooth colour fields with texture, 2 classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        folder = root / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        fx, fy, ph = rng.uniform(0.005, 0.05, 3)
        base = np.stack([np.sin(fx * xx + ph * c) * np.cos(fy * yy + c) for c in range(3)], -1)
        img = (127 + 100 * base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=JPEG_QUALITY)


def training_rates(table: Path, image_size: int) -> dict[str, float]:
    """model -> harness_img_s at `image_size` from a throughput CSV (empty when the file has none)."""
    if not table.is_file():
        return {}
    with open(table) as f:
        return {r["model"]: float(r["harness_img_s"]) for r in csv.DictReader(f)
                if r.get("image_size") == str(image_size) and r.get("harness_img_s")}


def workers_needed(rates: dict[str, float], per_worker: float, default_workers: int, cores: int) -> list[dict[str, Any]]:
    """For each model: how many decoding workers its training rate needs, and whether data.py's default gives them."""
    out = []
    for model, ips in rates.items():
        need = math.ceil(ips / per_worker)
        out.append({"model": model, "trains_img_s": ips, "workers_needed": need, "default_workers": default_workers,
                    "cores": cores, "decoding": "would starve the GPU" if need > default_workers else "keeps up"})
    return out


def loader(args: argparse.Namespace, device: torch.device, dev_name: str, log: Callable[[str], None]) -> int:
    cores = os.cpu_count() or 1
    default_workers = min(8, cores // 2)  # data.load_folder's default
    workers_list = args.workers or sorted({1, max(1, default_workers)})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_jpeg_folder(Path(tmp), args.images)
        for workers in workers_list:
            spec = data_mod.DataSpec(name="imagefolder", root=Path(tmp), image_size=args.size, workers=workers,
                                     val_fraction=0.02)
            ds = data_mod.load(spec, device)
            g = torch.Generator(device=device)
            epoch_s = []
            n = 0
            for epoch in range(EPOCHS):
                g.manual_seed(epoch)
                t0 = time.perf_counter()
                n = 0
                for x, _ in ds.train.batches(args.batch_size, shuffle=True, generator=g, drop_last=False):
                    n += len(x)
                common.sync(device)
                epoch_s.append(time.perf_counter() - t0)
            ips = n / statistics.median(epoch_s[1:])
            rows.append({"workers": workers, "image_size": args.size, "images": n,
                         "first_epoch_img_s": round(n / epoch_s[0], 1), "img_s": round(ips, 1),
                         "img_s_per_worker": round(ips / max(1, workers), 1)})
            log(f"  {workers} workers: {rows[-1]}")
    per_worker = max(r["img_s_per_worker"] for r in rows)
    table = args.out / f"throughput-{common.device_slug(device, dev_name)}.csv"
    need = training_rates(table, args.size)
    source = str(table.relative_to(common.REPO)) if need and table.is_relative_to(common.REPO) else (
        str(table) if need else "timm's RTX 3090 AMP figures")
    verdicts = workers_needed(need or dict(TIMM_RTX3090), per_worker, default_workers, cores)
    stem = f"loader-{common.device_slug(device, dev_name)}"
    args.out.mkdir(parents=True, exist_ok=True)
    text = "\n".join([
        f"# JPEG decoding (imagefolder, {args.size} px) on {dev_name}", "",
        f"- command: `{common.command_line('loader.py', args.argv)}`",
        f"- {args.images} JPEGs of {JPEG_SIZE[0]}x{JPEG_SIZE[1]}, quality {JPEG_QUALITY}; harness.data's FolderSplit "
        f"(PIL decode, resize, centre crop in DataLoader workers, persistent across epochs, pinned memory on CUDA); "
        f"batch {args.batch_size}",
        f"- {common.stamp()}", "",
        common.md_table(rows, list(rows[0])), "",
        f"Training rates from {source}; workers needed = training img/s / best img/s per worker:", "",
        common.md_table(verdicts, list(verdicts[0])), ""])
    (args.out / f"{stem}.md").write_text(text)
    log(text)
    log(f"results: {args.out / (stem + '.md')}")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=512, help="JPEGs to generate [default: 512]")
    p.add_argument("--size", type=int, default=224, help="decoded size in pixels per side [default: 224]")
    p.add_argument("--workers", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="comma-separated worker counts [default: 1 and data.py's default]")
    p.add_argument("--batch-size", type=int, default=128, help="images per batch [default: 128]")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", type=Path, default=common.RESULTS,
                   help="folder for the table, and where this device's throughput CSV is looked for [default: benchmarks/results]")
    args = p.parse_args(argv)
    args.argv = argv
    return args


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = common.working_device(resolve_device(args.device))
    return loader(args, device, common.device_name(device), log)


if __name__ == "__main__":
    sys.exit(main())
