"""Dataset loaders (the registry without torch is harness/datasets.py) and the batch pipeline.

Small sets (digits, synthetic, CIFAR) are held whole as uint8 tensors on the training device and
batched by index permutation, with augmentation applied to whole batches there: no DataLoader
workers and no host-to-device copy per step (airbench's design). Folder sets (imagefolder,
tinyimagenet) stream through a DataLoader with workers and pinned memory, decoded to uint8 at the
run's image size, and get the same on-device augmentation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from harness.datasets import (  # noqa: F401
    DATASETS,
    DataSpec,
    check_spec,
    held_out_val,
    list_folder,
    n_val,
    stratified_order,  # (train_images re-exported)
    synthetic_total,
    three_way,
    train_images,
)
from harness.errors import UserError
from harness.recipes import Recipe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Split(Protocol):
    def __len__(self) -> int: ...
    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None,
                drop_last: bool) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class TensorSplit:
    """A whole split as uint8 images [N, C, H, W] and int64 labels, on one device.

    `size`: the side its batches come out at when the images are stored at another (their native
    size): each batch is resized as it is taken (`_resize_uint8`). Loaders keep native images and
    say the run's size; `to()` decides where the resize happens."""

    x: torch.Tensor
    y: torch.Tensor
    size: int | None = None  # None: batches come out as stored

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device, *, per_batch: bool | None = None) -> TensorSplit:
        """The split on `device`. On CUDA (or `per_batch=True`) the images stay at their native size
        and each batch is resized on the device: CIFAR-10 at 224 px would otherwise hold ~7.5 GB of
        uint8 per trial (150 MB native), after a one-thread CPU resize. On the CPU the whole split is
        resized once, here, with the same function as before: its numbers do not change."""
        per_batch = device.type == "cuda" if per_batch is None else per_batch
        if self.size is None or not per_batch:
            x = self.x if self.size is None else _resize_uint8(self.x, self.size)
            return TensorSplit(x.to(device), self.y.to(device))
        return TensorSplit(self.x.to(device), self.y.to(device), self.size)

    def batches(self, batch_size, *, shuffle, generator, drop_last):
        n = len(self.y)
        order = (torch.randperm(n, generator=generator, device=generator.device).to(self.x.device)
                 if shuffle else torch.arange(n, device=self.x.device))
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            x = self.x[idx]
            yield (x if self.size is None else _resize_uint8(x, self.size)), self.y[idx]


@dataclass
class FolderSplit:
    """Images decoded from files by DataLoader workers, moved to the device per batch.

    One DataLoader per batch shape, kept for the run: its workers persist across epochs (no
    process start-up per epoch), and its sampler's generator is reseeded from the run's generator
    each epoch, so the order stays a function of (seed, epoch)."""

    dataset: torch.utils.data.Dataset
    device: torch.device
    workers: int
    _loaders: dict = field(default_factory=dict, repr=False)  # (batch_size, shuffle, drop_last) -> (loader, generator)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def batches(self, batch_size, *, shuffle, generator, drop_last):
        key = (batch_size, shuffle, drop_last)
        if key not in self._loaders:
            # The sampler owns its generator: the order then does not depend on whether the
            # loader's iterator is new (first epoch, or a resumed run) or a persistent one reused.
            cpu_gen = torch.Generator()
            sampler = torch.utils.data.RandomSampler(self.dataset, generator=cpu_gen) if shuffle else None
            self._loaders[key] = (torch.utils.data.DataLoader(
                self.dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last,
                num_workers=self.workers, pin_memory=self.device.type == "cuda",
                persistent_workers=self.workers > 0, prefetch_factor=4 if self.workers else None), cpu_gen)
        loader, cpu_gen = self._loaders[key]
        seed = 0
        if shuffle and generator is not None:  # one draw per epoch, not a sync per step
            seed = int(torch.randint(0, 2**31, (1,), generator=generator, device=generator.device))
        cpu_gen.manual_seed(seed)
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)


def head(split: Split, n: int) -> Split:
    """The first `n` images of a split. Training splits are stored in a class-mixed order (a seeded
    permutation, or `datasets.stratified_order` for folder and CIFAR sets and wherever `train_size`
    caps), so this is a fixed sample that covers every class: the training-accuracy probe."""
    if isinstance(split, TensorSplit):
        return TensorSplit(split.x[:n], split.y[:n], split.size)
    assert isinstance(split, FolderSplit)
    idx = range(min(n, len(split)))
    return FolderSplit(torch.utils.data.Subset(split.dataset, idx), split.device, split.workers)


def probe(ds: Dataset) -> Split:
    """The training-accuracy probe: as many training images as the validation set holds, the same
    ones every epoch (a stratified sample: see `head`)."""
    return head(ds.train, len(ds.val))


@dataclass
class Dataset:
    name: str
    num_classes: int
    class_names: list[str]
    image_size: int
    train: Split
    val: Split  # chooses: the best epoch, the lr on a curve, a sweep's best trial, ASHA's rungs
    hflip: bool  # False where mirroring changes the class (digits)
    description: str
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    # What the tables report, scored once at the end of a run; nothing chooses on it. None: a plugin's set
    # without one (its runs then have no test numbers, and the tables say so).
    test: Split | None = None


# --- loaders ------------------------------------------------------------------------------------

def _resize_uint8(x: torch.Tensor, size: int) -> torch.Tensor:
    """[N, C, h, w] uint8 -> [N, C, size, size] uint8 (bilinear, antialiased when shrinking)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = []
    for chunk in x.split(1024):
        out.append(F.interpolate(chunk.float(), size=(size, size), mode="bilinear", align_corners=False,
                                 antialias=chunk.shape[-1] > size).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def _split(x: torch.Tensor, y: torch.Tensor, spec: DataSpec, size: int | None = None
           ) -> tuple[TensorSplit, TensorSplit, TensorSplit]:
    """(train, val, test) of a set with no split of its own, stratified by class (`datasets.three_way`)."""
    train, val, test = (torch.tensor(i, dtype=torch.long) for i in three_way(y.tolist(), spec))
    return TensorSplit(x[train], y[train], size), TensorSplit(x[val], y[val], size), TensorSplit(x[test], y[test], size)


def _sizes(train: Split, val: Split, test: Split) -> str:
    return f"{len(train)} train / {len(val)} val / {len(test)} test"


def load_digits(spec: DataSpec) -> Dataset:
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()  # 1,797 8x8 images, values 0..16, shipped inside scikit-learn
    x = torch.from_numpy(d.images).float().mul_(255 / 16).round_().to(torch.uint8)[:, None]
    x = x.expand(-1, 3, -1, -1).contiguous()  # native 8x8; resized to the run's size by TensorSplit.to
    y = torch.from_numpy(d.target).long()
    train, val, test = _split(x, y, spec, spec.image_size)
    return Dataset("digits", 10, [str(i) for i in range(10)], spec.image_size, train, val, hflip=False, test=test,
                   description=f"digits (scikit-learn, 8x8 upsampled to {spec.image_size} px): {_sizes(train, val, test)}")


def load_synthetic(spec: DataSpec) -> Dataset:
    """Learnable generated classes: each a random smooth pattern, seen through noise and shifts."""
    k = spec.num_classes
    n_total = synthetic_total(spec)
    g = torch.Generator().manual_seed(spec.split_seed + 12345)
    protos = F.interpolate(torch.rand(k, 3, 4, 4, generator=g), size=(spec.image_size,) * 2, mode="bilinear")
    y = torch.arange(n_total) % k
    y = y[torch.randperm(n_total, generator=g)]
    shift = torch.randint(-2, 3, (2,), generator=g).tolist()
    x = 0.6 * protos[y].roll(shifts=shift, dims=(2, 3)) + 0.4 * torch.rand(n_total, 3, spec.image_size, spec.image_size, generator=g)
    x = x.mul_(255).round_().to(torch.uint8)
    train, val, test = _split(x, y, spec.model_copy(update={"train_size": None}))
    return Dataset("synthetic", k, [f"class {i}" for i in range(k)], spec.image_size, train, val, hflip=True, test=test,
                   description=f"synthetic ({k} classes, {spec.image_size} px): {_sizes(train, val, test)}")


def load_cifar(spec: DataSpec) -> Dataset:
    from torchvision import datasets

    cls = datasets.CIFAR10 if spec.name == "cifar10" else datasets.CIFAR100
    try:
        parts = [cls(str(spec.root), train=t, download=spec.download) for t in (True, False)]
    except RuntimeError as e:
        raise UserError("data.root", str(spec.root),
                        f"{spec.name} is not there ({e}). Point --data-root at the folder holding "
                        f"{'cifar-10-batches-py' if spec.name == 'cifar10' else 'cifar-100-python'}, "
                        "or add --download when online.") from None
    # The official test set is the test split; val is carved out of the official train set (stratified),
    # whose rest is class-mixed whatever the file's order, so a cap and the probe see every class.
    x_train, x_test = (torch.from_numpy(p.data).permute(0, 3, 1, 2).contiguous() for p in parts)  # native 32 px
    y_train, y_test = (torch.tensor(p.targets, dtype=torch.long) for p in parts)
    keep, val_idx = (torch.tensor(i, dtype=torch.long) for i in held_out_val(parts[0].targets, spec))
    train = TensorSplit(x_train[keep], y_train[keep], spec.image_size)
    val = TensorSplit(x_train[val_idx], y_train[val_idx], spec.image_size)
    test = TensorSplit(x_test, y_test, spec.image_size)
    return Dataset(spec.name, len(parts[0].classes), list(parts[0].classes), spec.image_size, train, val, hflip=True,
                   test=test, description=f"{spec.name} ({spec.root}, {spec.image_size} px): {_sizes(train, val, test)}")


class _Files(torch.utils.data.Dataset):
    """(path, label) pairs decoded to uint8 [3, size, size]."""

    def __init__(self, samples: list[tuple[str, int]], image_size: int) -> None:
        from torchvision.transforms import v2

        self.samples = samples
        self.transform = v2.Compose([v2.PILToTensor(), v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, label = self.samples[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), label


MAX_AUTO_WORKERS = 8  # decoding past this many workers rarely feeds a single GPU faster; more cost memory


def granted_cpus(threads: int | None = None) -> int:
    """The CPUs this process may use: the trial's thread count when it has one (a Ray trial's grant),
    else the CPUs it is pinned to (taskset, cgroup cpusets), never the whole machine's `os.cpu_count()`."""
    try:
        pinned = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        pinned = os.cpu_count() or 1
    return max(1, min(threads, pinned) if threads else pinned)


def auto_workers(threads: int | None = None) -> int:
    """Loader workers when the data spec names none: half the granted CPUs (the other half trains and
    copies), at most MAX_AUTO_WORKERS; 0 (decode in the training process) with one CPU."""
    return min(MAX_AUTO_WORKERS, granted_cpus(threads) // 2)


def gpu_trial_workers(host_cpus: int, *, node_gpus: float, granted_gpus: float) -> int:
    """Loader workers for a trial that trains on a GPU: its share of the host's cores, as its share of
    the node's cards (a trial with a whole card of 8 on a 16-core node: 2 cores), not its `resources.cpu`,
    which only says what Ray reserves for the trial's own process: one core decodes ~150 JPEGs/s, several
    times too few for a card at 224 px. One core is left to the training process; at most MAX_AUTO_WORKERS."""
    share = min(1.0, granted_gpus / node_gpus) if node_gpus > 0 else 1.0
    return max(0, min(MAX_AUTO_WORKERS, int(host_cpus * share) - 1))


def load_folder(spec: DataSpec, device: torch.device) -> Dataset:
    """imagefolder / tinyimagenet, split as `datasets.list_folder` describes, decoded by loader workers
    (`spec.workers`; unset: `auto_workers()`, and fit() sets it from the run's granted threads)."""
    listing = list_folder(spec)
    workers = spec.workers if spec.workers is not None else auto_workers()
    train, val, test = (FolderSplit(_Files(part, spec.image_size), device, workers)
                        for part in (listing.train, listing.val, listing.test))
    classes = listing.classes
    return Dataset(spec.name, len(classes), classes, spec.image_size, train, val, hflip=True, test=test,
                   description=f"{spec.name} ({listing.root}, {spec.image_size} px): {_sizes(train, val, test)}, "
                               f"{len(classes)} classes, {workers} loader workers")


def load(spec: DataSpec, device: torch.device) -> Dataset:
    """The dataset `spec` names (a plugin's too: harness/datasets.py), its tensor splits on `device`."""
    check_spec(spec)
    entry = DATASETS[spec.name]
    if entry.streamed:  # folder sets stream through a DataLoader onto the device
        return entry.loader_fn()(spec, device)
    ds = entry.loader_fn()(spec)
    ds.train, ds.val = ds.train.to(device), ds.val.to(device)  # type: ignore[attr-defined]
    if ds.test is not None:
        ds.test = ds.test.to(device)  # type: ignore[attr-defined]
    return ds


# --- augmentation ---------------------------------------------------------------------------------

def _rrc_boxes(n: int, h: int, w: int, scale_min: float, g: torch.Generator, device: torch.device) -> torch.Tensor:
    """Random resized crop boxes [n, 4] (x0, y0, x1, y1), sampled as torchvision's RandomResizedCrop
    does: area in [scale_min, 1] of the image, aspect ratio log-uniform in [3/4, 4/3], 10 tries
    per image, then the whole image."""
    tries = 10
    area = torch.empty(n, tries, device=g.device).uniform_(scale_min, 1.0, generator=g) * (h * w)
    log_r = torch.empty(n, tries, device=g.device).uniform_(math.log(3 / 4), math.log(4 / 3), generator=g)
    cw, ch = (area * log_r.exp()).sqrt().round(), (area / log_r.exp()).sqrt().round()
    ok = (cw >= 1) & (ch >= 1) & (cw <= w) & (ch <= h)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full((n,), -1, device=g.device))
    pick = first.clamp(min=0)[:, None]
    cw = torch.where(first >= 0, cw.gather(1, pick)[:, 0], torch.full((n,), float(w), device=g.device))
    ch = torch.where(first >= 0, ch.gather(1, pick)[:, 0], torch.full((n,), float(h), device=g.device))
    x0 = (torch.rand(n, generator=g, device=g.device) * (w - cw + 1)).floor()
    y0 = (torch.rand(n, generator=g, device=g.device) * (h - ch + 1)).floor()
    return torch.stack([x0, y0, x0 + cw, y0 + ch], 1).to(device)


def _posterize_keep_zero_bits(img, bits_to_keep: int, **kw):
    """timm's posterize, also at 0 bits. With 'inc1' and magnitude noise a level of 10 keeps 4 - 4 = 0
    bits; Pillow < 12 turned that into a black image, Pillow >= 12 raises ValueError and the trial
    crashes. Keep the old result (every bit masked off)."""
    from PIL import Image
    from timm.data.auto_augment import posterize

    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)
    return posterize(img, bits_to_keep, **kw)


class BatchAugment:
    """uint8 batch -> normalised float batch, augmented as the recipe says, on its own device.

    The order is timm's `create_transform`: crop (random resized, or padded random), horizontal
    flip, RandAugment (timm's own `rand_augment_transform`, one op draw per image), normalisation,
    random erasing. Every draw comes from the epoch's generator or the epoch-seeded global RNGs,
    so a resumed run replays the same augmentations. With no recipe: normalisation only.

    RandAugment runs where the batch is: on a CUDA batch `harness.augment.DeviceRandAugment` applies
    timm's ops on the device (no host round trip); elsewhere timm's PIL ops per image, as they always
    did (the CPU numbers stay as they were). `randaugment_on_device` forces either (tests, benchmarks).
    """

    def __init__(self, ds: Dataset, recipe: Recipe | None = None, *, device: torch.device,
                 randaugment_on_device: bool | None = None) -> None:
        self.size = ds.image_size
        self.mean = torch.tensor(ds.mean, device=device).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(ds.std, device=device).view(1, -1, 1, 1) * 255
        self.crop, self.pad, self.pad_mode, self.scale_min = "none", 0, "reflect", 1.0
        self.hflip, self.randaugment, self.erase = 0.0, None, None
        self.device_randaugment = None  # harness.augment.DeviceRandAugment, when timm's ops have an on-device form
        self.randaugment_on_device = randaugment_on_device  # None: on CUDA batches
        if recipe is None:
            return
        self.crop = recipe.crop
        if recipe.crop == "pad":
            self.pad = round(recipe.crop_pad * ds.image_size)
            self.crop = "pad" if self.pad > 0 else "none"
        self.pad_mode, self.scale_min = recipe.crop_pad_mode, recipe.crop_scale
        self.hflip = recipe.hflip if ds.hflip else 0.0  # never where mirroring changes the class (digits)
        if recipe.randaugment:
            from timm.data.auto_augment import rand_augment_transform

            # timm's create_transform hparams: translations relative to the image, fill = the mean colour.
            self.randaugment = rand_augment_transform(recipe.randaugment, {
                "translate_const": int(ds.image_size * 0.45),
                "img_mean": tuple(min(255, round(255 * m)) for m in ds.mean)})
            for op in self.randaugment.ops:
                if op.aug_fn.__name__ == "posterize":
                    op.aug_fn = _posterize_keep_zero_bits
            from harness.augment import DeviceRandAugment

            if DeviceRandAugment.supports(self.randaugment):
                self.device_randaugment = DeviceRandAugment(self.randaugment, device=self.mean.device)
            elif randaugment_on_device:
                raise ValueError(f"randaugment {recipe.randaugment!r} has ops with no on-device form")
        if recipe.random_erasing > 0:
            from timm.data.random_erasing import RandomErasing

            self.erase = RandomErasing(probability=recipe.random_erasing, mode="pixel", device=str(device))

    def describe(self) -> str:
        parts = {"pad": f"pad-crop {self.pad}px ({self.pad_mode})", "rrc": f"random resized crop (area >= {self.scale_min:g})",
                 "none": ""}[self.crop]
        extra = [p for p in (parts, f"flip {self.hflip:g}" if self.hflip else "",
                             ("RandAugment on the device" if self.mean.is_cuda and self.device_randaugment else "RandAugment")
                             if self.randaugment else "", "erasing" if self.erase else "") if p]
        return ", ".join(extra) or "none"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def _geometry(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """Crop and flip a uint8 batch; float [0, 255] out when anything moved."""
        n, c, h, w = x.shape
        dev = x.device
        flip = None
        if self.hflip:
            flip = (torch.rand(n, generator=g, device=g.device) < self.hflip).to(dev)
        if self.crop == "rrc":
            from torchvision.ops import roi_align

            boxes = _rrc_boxes(n, h, w, self.scale_min, g, dev)
            rois = torch.cat([torch.arange(n, device=dev, dtype=boxes.dtype)[:, None], boxes], 1)
            # Bilinear resize of each box back to the full size, all images in one call: one sample per
            # output pixel at its centre (aligned), so a box of the whole image returns the image itself.
            x = roi_align(x.float(), rois, output_size=(h, w), spatial_scale=1.0, sampling_ratio=1, aligned=True)
        elif self.crop == "pad":
            p = self.pad
            xp = F.pad(x.float(), (p, p, p, p), mode=self.pad_mode)
            dy = torch.randint(0, 2 * p + 1, (n,), generator=g, device=g.device).to(dev)
            dx = torch.randint(0, 2 * p + 1, (n,), generator=g, device=g.device).to(dev)
            rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]
            cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]
            x = xp[torch.arange(n, device=dev)[:, None, None, None], torch.arange(c, device=dev)[None, :, None, None], rows, cols]
        if flip is not None:
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        return x

    def _randaugment(self, x: torch.Tensor) -> torch.Tensor:
        """timm's RandAugment per image (PIL ops, on the CPU): the ops and magnitudes are timm's."""
        from PIL import Image

        imgs = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        out = [torch.from_numpy(np.array(self.randaugment(Image.fromarray(im)))) for im in imgs]
        return torch.stack(out).permute(0, 3, 1, 2).to(x.device)

    def _randaugment_here(self, x: torch.Tensor) -> bool:
        """On the device: a CUDA batch (unless told otherwise), when timm's ops have an on-device form."""
        if self.device_randaugment is None:
            return False
        return x.is_cuda if self.randaugment_on_device is None else self.randaugment_on_device

    def _randaugment_device(self, x: torch.Tensor) -> torch.Tensor:
        """timm's RandAugment on the batch's device (harness.augment): uint8 in and out, as the PIL path."""
        if x.dtype != torch.uint8:
            x = x.round().clamp(0, 255).to(torch.uint8)
        return self.device_randaugment(x)

    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self._geometry(x, g)
        if self.randaugment is not None:
            x = self._randaugment_device(x) if self._randaugment_here(x) else self._randaugment(x)
        x = self.normalize(x)
        if self.erase is not None:
            x = self.erase(x)
        return x
