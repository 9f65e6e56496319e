"""The dataset registry without torch: names, what each needs, how many training images it gives.

A spec is checked against this before anything loads or is written (`check_spec`), and a run's
budget is resolved from `train_images` without decoding an image; neither imports torch, so
`harness sweep --validate` stays fast. The loaders themselves live in harness/data.py and are
imported only when a run loads its data. A plugin adds its own set with `register`:

    register(DatasetEntry("my_set", loader=my_loader, train_images=lambda spec: 5000))

where `my_loader(spec) -> harness.data.Dataset` returns uint8 tensor splits.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from harness.errors import UserError, unknown


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "digits"
    image_size: int = Field(32, ge=8, le=1024, description="images are resized to this many pixels per side")
    root: Path | None = Field(None, description="folder holding the dataset (cifar*, tinyimagenet, imagefolder)")
    download: bool = Field(False, description="cifar*: download into root when missing (needs internet)")
    num_classes: int = Field(10, ge=2, le=1000, description="synthetic only")
    train_size: int | None = Field(None, ge=2, description="synthetic: images to generate (default 1000); others: cap")
    val_fraction: float = Field(0.2, gt=0, lt=1, description=(
        "validation share (it chooses: the lr on a curve, a sweep's best trial, ASHA's rungs) of the whole set, "
        "or of the training split where the set has an official test split (cifar*, tinyimagenet)"))
    test_fraction: float = Field(0.2, gt=0, lt=1, description=(
        "test share (what the tables report; nothing chooses on it) where the set has no test split of its own"))
    split_seed: int = Field(0, description="the train/val/test split is fixed by this, not by the run seed")
    workers: int | None = Field(None, ge=0, description="folder sets: DataLoader workers (None = half the cores, at most 8)")

    @model_validator(mode="after")
    def _room_to_train(self) -> DataSpec:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} leaves under a "
                             "tenth of the images to train on; e.g. val_fraction 0.2, test_fraction 0.2")
        return self


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: str | Callable[..., Any]  # "module:function" (imported when used) or the function
    train_images: Callable[[DataSpec], int]  # the training images load() gives, decoding none
    needs_root: bool = False
    streamed: bool = False  # loader(spec, device) streams from files; otherwise loader(spec) -> tensor splits

    def loader_fn(self) -> Callable[..., Any]:
        if callable(self.loader):
            return self.loader
        module, _, fn = self.loader.partition(":")
        return getattr(importlib.import_module(module), fn)


DATASETS: dict[str, DatasetEntry] = {}


def register(entry: DatasetEntry) -> DatasetEntry:
    DATASETS[entry.name] = entry
    return entry


DIGITS_IMAGES, CIFAR_TRAIN_IMAGES = 1797, 50_000


def n_val(total: int, spec: DataSpec) -> int:
    """Validation images carved out of `total`."""
    return max(1, int(round(total * spec.val_fraction)))


def n_test(total: int, spec: DataSpec) -> int:
    """Test images carved out of `total` where the set has no test split of its own."""
    return max(1, int(round(total * spec.test_fraction)))


def three_way(labels: Sequence[int], spec: DataSpec) -> tuple[list[int], list[int], list[int]]:
    """(train, val, test) indices of a set with no split of its own: one `stratified_order` by
    `split_seed`, test its first `test_fraction`, val the next `val_fraction`, train the rest (each part
    holds every class in its share, within an image or two), then the training cap `train_size`."""
    order = stratified_order(labels, spec.split_seed)
    k_test, k_val = n_test(len(order), spec), n_val(len(order), spec)
    test, val, train = order[:k_test], order[k_test:k_test + k_val], order[k_test + k_val:]
    return _stratified_cap(train, labels, spec), val, test


def held_out_val(labels: Sequence[int], spec: DataSpec, fraction: float | None = None) -> tuple[list[int], list[int]]:
    """(train, held out) indices of a training split whose set has its own test split (cifar*, tinyimagenet,
    a folder with test/): a stratified `fraction` of it (default `val_fraction`) held out, the rest to train,
    capped. A folder with train/ and val/ only holds its test split out the same way (`test_fraction`)."""
    order = stratified_order(labels, spec.split_seed)
    k = max(1, int(round(len(order) * (spec.val_fraction if fraction is None else fraction))))
    return _stratified_cap(order[k:], labels, spec), order[:k]


def _stratified_cap(train: list[int], labels: Sequence[int], spec: DataSpec) -> list[int]:
    """The training indices in a class-mixed order, the first `train_size` of them when capped: a cap
    keeps the class balance and the training-accuracy probe (the split's first images) sees every class."""
    mixed = stratified_order([labels[i] for i in train], spec.split_seed)
    return [train[i] for i in mixed][: spec.train_size]


def _capped(n: int, spec: DataSpec) -> int:
    return min(n, spec.train_size) if spec.train_size is not None else n


def synthetic_total(spec: DataSpec) -> int:
    """Images the synthetic set generates so that exactly `train_size` (default 1000) are left to train on
    (the rounding of the two held-out shares can miss by one: step to the nearest total that does not)."""
    want = spec.train_size or 1000
    total = int(round(want / (1 - spec.val_fraction - spec.test_fraction)))
    for _ in range(8):
        train = total - n_val(total, spec) - n_test(total, spec)
        if train == want:
            break
        total += 1 if train < want else -1
    return total


def _synthetic_images(spec: DataSpec) -> int:
    total = synthetic_total(spec)
    return total - n_val(total, spec) - n_test(total, spec)


def stratified_order(labels: Sequence[int], seed: int) -> list[int]:
    """A seeded, class-mixed order of `labels`' indices in which every prefix holds each class in
    proportion to its share of the whole (within one image): the i-th of a class's n images (in a
    seeded shuffle) sits at (i + u) / n, u uniform in [0, 1), and the order sorts by that. So
    `order[:k]` is a stratified sample of size k: a `train_size` cap keeps the class balance, and the
    training-accuracy probe (the split's first images) covers every class. torchvision's ImageFolder
    lists samples sorted by class, where a plain prefix holds only the first classes."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    keyed = []
    for members in by_class.values():
        rng.shuffle(members)
        n = len(members)
        keyed.extend(((rank + rng.random()) / n, i) for rank, i in enumerate(members))
    return [i for _, i in sorted(keyed)]


@dataclass(frozen=True)
class FolderListing:
    """The (path, label) pairs of a folder set's splits, the training ones in stratified order
    (capped at `train_size`), listed without decoding an image."""

    root: Path
    train: list[tuple[str, int]]
    val: list[tuple[str, int]]
    test: list[tuple[str, int]]
    classes: list[str]


def _folder_classes(root: Path, field: str) -> tuple[list[tuple[str, int]], list[str]]:
    from torchvision.datasets import ImageFolder  # lists the files (imports torch; only for folder sets)

    try:
        folder = ImageFolder(str(root))
    except (FileNotFoundError, RuntimeError) as e:
        raise UserError(field, str(root), f"not an image folder ({e}). Expected one sub-folder of images per class.") from None
    return list(folder.samples), list(folder.classes)


def _same_classes(root: Path, part: str, classes: list[str]) -> list[tuple[str, int]]:
    samples, found = _folder_classes(root / part, "data.root")
    if found != classes:
        raise UserError("data.root", str(root), f"train/ and {part}/ must hold the same class folders.")
    return samples


def list_folder(spec: DataSpec) -> FolderListing:
    """How each folder layout is split into train / val (chooses) / test (reported):
    - `tinyimagenet`: `train/<wnid>/...` (the images/ sub-folder is found by ImageFolder's walk); its
      labelled `val/` (labels from `val/val_annotations.txt`: file -> wnid) is the test split, as the
      official test has no labels; val is a stratified `val_fraction` of train/;
    - `imagefolder` with `train/`, `val/` and `test/`: those three, which must hold the same class folders;
      with `train/` and `test/`: val carved out of train/; with `train/` and `val/` only: test carved
      out of train/ (`test_fraction` of it), so val stays the user's;
    - `imagefolder` flat (one folder per class): test and val carved out (`datasets.three_way`).
    Every carve is stratified by class and fixed by `split_seed`; the training list is class-mixed, then capped."""
    root = Path(spec.root)  # type: ignore[arg-type]
    if spec.name == "tinyimagenet":
        if (root / "tiny-imagenet-200").is_dir():
            root = root / "tiny-imagenet-200"
        train, classes = _folder_classes(root / "train", "data.root")
        index = {c: i for i, c in enumerate(classes)}
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise UserError("data.root", str(spec.root), "no val/val_annotations.txt: expected the tiny-imagenet-200 layout.")
        test = []
        for n, line in enumerate(ann.read_text().splitlines(), 1):
            fname, wnid = (line.split("\t") + [""])[:2]
            if wnid not in index:
                raise UserError("data.root", str(ann), f"line {n} names class {wnid!r}, which train/ has no folder for: "
                                "expected the tiny-imagenet-200 layout (val_annotations.txt: file<TAB>wnid<TAB>box).")
            test.append((str(root / "val" / "images" / fname), index[wnid]))
        keep, val_idx = held_out_val([label for _, label in train], spec)
        train, val = [train[i] for i in keep], [train[i] for i in val_idx]
    elif (root / "train").is_dir() and ((root / "val").is_dir() or (root / "test").is_dir()):
        train, classes = _folder_classes(root / "train", "data.root")
        labels = [label for _, label in train]
        if (root / "val").is_dir() and (root / "test").is_dir():
            val, test = _same_classes(root, "val", classes), _same_classes(root, "test", classes)
            train = [train[i] for i in _stratified_cap(list(range(len(train))), labels, spec)]
        elif (root / "test").is_dir():
            test = _same_classes(root, "test", classes)
            keep, val_idx = held_out_val(labels, spec)
            train, val = [train[i] for i in keep], [train[i] for i in val_idx]
        else:
            val = _same_classes(root, "val", classes)
            keep, test_idx = held_out_val(labels, spec, spec.test_fraction)
            train, test = [train[i] for i in keep], [train[i] for i in test_idx]
    else:
        samples, classes = _folder_classes(root, "data.root")
        keep, val_idx, test_idx = three_way([label for _, label in samples], spec)
        train, val, test = ([samples[i] for i in idx] for idx in (keep, val_idx, test_idx))
    return FolderListing(root, train, val, test, classes)


register(DatasetEntry("digits", "harness.data:load_digits",
                      lambda s: _capped(DIGITS_IMAGES - n_val(DIGITS_IMAGES, s) - n_test(DIGITS_IMAGES, s), s)))
register(DatasetEntry("synthetic", "harness.data:load_synthetic", _synthetic_images))
for _name in ("cifar10", "cifar100"):
    register(DatasetEntry(_name, "harness.data:load_cifar", lambda s: _capped(CIFAR_TRAIN_IMAGES - n_val(CIFAR_TRAIN_IMAGES, s), s),
                                  needs_root=True))
for _name in ("tinyimagenet", "imagefolder"):
    register(DatasetEntry(_name, "harness.data:load_folder", lambda s: len(list_folder(s).train), needs_root=True, streamed=True))


def check_spec(spec: DataSpec, field: str = "data") -> None:
    """Refuse what cannot load, before anything is written."""
    if spec.name not in DATASETS:
        raise unknown(f"{field}.name", spec.name, DATASETS)
    if DATASETS[spec.name].needs_root:
        if spec.root is None:
            raise UserError(f"{field}.root", None, f"{spec.name} needs the folder it lives in: pass --data-root PATH.")
        if not spec.root.exists() and not (spec.download and spec.name.startswith("cifar")):
            raise UserError(f"{field}.root", str(spec.root), "No such folder. Check the path"
                            + (", or add --download to fetch it." if spec.name.startswith("cifar") else "."))


def train_images(spec: DataSpec) -> int:
    """How many training images `load(spec)` will give, without decoding any (the run's budget is
    resolved from it before anything trains)."""
    check_spec(spec)
    return DATASETS[spec.name].train_images(spec)
