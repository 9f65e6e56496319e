"""The per-class evaluation of a run's best weights (accuracy per class, the confusion matrix, sample
predictions as PNGs), the validation pass the loop runs every epoch, and the test pass it runs once, at
the end, on the final weights (what the tables report, image by image)."""

from __future__ import annotations

import base64
import io
from typing import Any

import torch
import torch.nn.functional as F

from harness import data as data_mod


def pack_correct(hits: Any) -> str:
    """Per-image correctness (bools, in the test split's fixed order) -> the text of `runs.test_correct`:
    base64 of numpy's packbits, one bit per image (10,000 images: 1.7 kB). `store.unpack_correct` reads it
    back; the loop imports no database code, so the two halves of the format live on their two sides."""
    import numpy as np

    return base64.b64encode(np.packbits(np.asarray(hits, dtype=bool)).tobytes()).decode()


def _eval_input(x: torch.Tensor, augment: data_mod.BatchAugment, channels_last: bool) -> torch.Tensor:
    """A batch as the model sees it in evaluation: normalized, in the memory format it trained with."""
    x = augment.normalize(x)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(model: torch.nn.Module, split: data_mod.Split, augment: data_mod.BatchAugment, *, batch_size: int,
             autocast: Any, channels_last: bool = False) -> tuple[float, float]:
    """Plain cross-entropy and accuracy on a split (no smoothing, so recipes compare fairly).
    `channels_last`: feed NHWC batches, as training does (`Training.eval_channels_last`)."""
    model.eval()
    loss_sum = torch.zeros((), device=augment.mean.device)
    correct = torch.zeros((), device=augment.mean.device, dtype=torch.long)
    n = 0
    for x, y in split.batches(batch_size, shuffle=False, generator=None, drop_last=False):
        with autocast():
            out = model(_eval_input(x, augment, channels_last))
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        correct += (out.argmax(1) == y).sum()
        n += len(y)
    return float(loss_sum) / max(n, 1), float(correct) / max(n, 1)


@torch.no_grad()
def score_test(model: torch.nn.Module, split: data_mod.Split, augment: data_mod.BatchAugment, *, batch_size: int,
               autocast: Any, channels_last: bool = False) -> dict[str, Any]:
    """The test split scored once: plain cross-entropy, accuracy, and which images were right, in the
    split's fixed order (`test_correct`: `pack_correct`'s text), so two runs on the
    same images compare pair by pair. Nothing chooses on these numbers: validation chooses."""
    import numpy as np

    model.eval()
    loss_sum, right = torch.zeros((), device=augment.mean.device), []
    for x, y in split.batches(batch_size, shuffle=False, generator=None, drop_last=False):
        with autocast():
            out = model(_eval_input(x, augment, channels_last))
        loss_sum += F.cross_entropy(out.float(), y, reduction="sum")
        right.append(out.argmax(1) == y)
    hits = torch.cat(right).cpu().numpy() if right else np.zeros(0, dtype=bool)
    n = len(hits)
    return {"test_loss": float(loss_sum) / max(n, 1), "test_acc": float(hits.mean()) if n else float("nan"), "n_test": n,
            "test_correct": pack_correct(hits)}


def _png(img: torch.Tensor) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).cpu().numpy()).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@torch.no_grad()
def evaluate_classes(model: torch.nn.Module, ds: data_mod.Dataset, augment: data_mod.BatchAugment, *, batch_size: int,
                     autocast: Any, samples: int, channels_last: bool = False) -> dict[str, Any]:
    """Per-class accuracy, confusion matrix and a grid of validation predictions (mistakes first)."""
    model.eval()
    k = ds.num_classes
    confusion = torch.zeros(k, k, dtype=torch.long)
    wrong: list[tuple[torch.Tensor, int, int]] = []
    right: list[tuple[torch.Tensor, int, int]] = []
    for x, y in ds.val.batches(batch_size, shuffle=False, generator=None, drop_last=False):
        with autocast():
            pred = model(_eval_input(x, augment, channels_last)).argmax(1)
        confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k).view(k, k)
        for img, t, p in zip(x, y.tolist(), pred.tolist()):
            bucket = wrong if t != p else right
            if len(bucket) < samples:
                bucket.append((img, t, p))
    per_class = (confusion.diag().float() / confusion.sum(1).clamp(min=1).float()).tolist()
    grid = (wrong + right)[:samples]
    return {"class_names": ds.class_names, "per_class_acc": per_class, "confusion": confusion.tolist(),
            "samples": [{"png": _png(img), "true": t, "pred": p} for img, t, p in grid]}
