"""Real pixels through every loader, as users point harness at their data: `digits`, an image folder
with `train/` + `val/` (PNG files), the CIFAR-10 and CIFAR-100 pickle layouts parsed by torchvision's
own loaders, and the Tiny ImageNet layout. Each is trained end to end through `harness train` and
must beat chance by a clear margin; each must put every class in the training set, in the
training-accuracy probe and in the validation set.

torchvision's ImageFolder lists samples sorted by class: before the training lists were put in a
stratified order, `train_size: 300` of the digits folder trained on classes [149, 144, 7, 0, ...]
and the probe held [149, 144, 67, 0, ...] (digits 0-2 only)."""

from __future__ import annotations

import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from dbrows import rows
from PIL import Image

from harness import data as data_mod
from harness.cli import main
from harness.datasets import DataSpec, stratified_order

pytestmark = pytest.mark.slow

PLUGIN = str(Path(__file__).parent / "plugins" / "small.py")  # timm's test_resnet: the data is under test, not the model
TRAIN = ["--model", "small_resnet", "--recipe", "naive", "--image-size", "16", "--threads", "2",
         "--set", "batch_size=32"]


@pytest.fixture(autouse=True)
def small_model():
    from harness import plugins

    plugins.load([PLUGIN])


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as uint8 8x8 images (0-255) and labels, in the file's order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * 255 / 16).round().astype(np.uint8), d.target.astype(int)


def seeded_split(n: int, val: int = 360) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(0).permutation(n)
    return order[val:], order[:val]


def labels_of(split) -> list[int]:
    """The labels of a split as loaded (tensor splits, file lists, and their probe subsets)."""
    if isinstance(split, data_mod.TensorSplit):
        return split.y.tolist()
    ds = split.dataset
    if isinstance(ds, torch.utils.data.Subset):
        return [ds.dataset.samples[i][1] for i in ds.indices]
    return [label for _, label in ds.samples]


def counts(labels: list[int], k: int) -> list[int]:
    c = Counter(labels)
    return [c.get(i, 0) for i in range(k)]


def assert_every_class_everywhere(spec: DataSpec, k: int) -> dict[str, list[int]]:
    ds = data_mod.load(spec, torch.device("cpu"))
    assert ds.num_classes == k
    seen = {"train": counts(labels_of(ds.train), k), "probe": counts(labels_of(data_mod.probe(ds)), k),
            "val": counts(labels_of(ds.val), k), "test": counts(labels_of(ds.test), k)}
    for part, c in seen.items():
        assert min(c) > 0, f"{part} misses classes: {c}"
    return seen


def train_cli(db_url: str, *args: str, epochs: int = 3) -> dict:
    r = CliRunner().invoke(main, ["--plugin", PLUGIN, "train", *TRAIN, "--epochs", str(epochs), "--db", db_url,
                                  *[str(a) for a in args]], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (run,) = rows(db_url, "select * from runs")
    assert run["status"] == "completed" and run["epochs_done"] == epochs
    return run


def test_stratified_order_keeps_class_shares_in_every_prefix():
    """A prefix of any length holds each class within one image of its share of the whole."""
    labels = [0] * 500 + [1] * 300 + [2] * 200  # class-ordered, as ImageFolder lists them
    order = stratified_order(labels, seed=3)
    assert sorted(order) == list(range(1000)) and order == stratified_order(labels, seed=3)
    assert order != stratified_order(labels, seed=4)
    for k in (1, 7, 10, 99, 300, 1000):
        c = counts([labels[i] for i in order[:k]], 3)
        for cls, share in enumerate((0.5, 0.3, 0.2)):
            assert abs(c[cls] - share * k) <= 1, (k, c)


def test_digits_trains_end_to_end(db_url):
    spec = DataSpec(name="digits", image_size=16)
    seen = assert_every_class_everywhere(spec, 10)
    # 1,797 images: a stratified fifth each for test and val (359), the rest to train.
    assert (sum(seen["train"]), sum(seen["val"]), sum(seen["test"])) == (1079, 359, 359)
    for part in ("val", "test"):  # within an image or two of the class's share
        assert all(abs(c - 359 / 10) <= 2 for c in seen[part]), (part, seen[part])
    ds = data_mod.load(spec, torch.device("cpu"))
    keys = {part: {tuple(x.flatten().tolist()) for x in getattr(ds, part).x} for part in ("train", "val", "test")}
    assert not (keys["test"] & keys["val"]) and not (keys["test"] & keys["train"])  # disjoint (digits has few twins)
    run = train_cli(db_url, "--data", "digits", epochs=2)
    assert run["final_val_acc"] > 0.5 and run["test_acc"] > 0.5 and run["n_test"] == 359, run  # chance is 0.1
    assert rows(db_url, "select min(train_acc) as a from epochs")[0]["a"] is not None


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory) -> Path:
    """digits as PNG files in train/<class>/ and val/<class>/ (1,437 / 360 images)."""
    root = tmp_path_factory.mktemp("digits_png")
    x, y = digits_arrays()
    train, val = seeded_split(len(y))
    for part, idx in (("train", train), ("val", val)):
        for i in idx:
            folder = root / part / str(y[i])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[i]).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize("train_size", [None, 300])
def test_image_folder_train_val_trains_on_every_class(digits_folder, db_url, train_size):
    spec = DataSpec(name="imagefolder", root=digits_folder, image_size=16, train_size=train_size, workers=2)
    seen = assert_every_class_everywhere(spec, 10)
    full = Counter(digits_arrays()[1][seeded_split(1797)[0]].tolist())
    if train_size is not None:  # the cap keeps each class's share (within one image)
        assert sum(seen["train"]) == train_size
        assert all(abs(seen["train"][c] - full[c] * train_size / 1437) <= 1 for c in range(10)), seen["train"]
    probe = min(360, sum(seen["train"]))  # as many as the validation set, or the whole (capped) training set
    assert all(abs(seen["probe"][c] - full[c] * probe / 1437) <= 1 for c in range(10)), seen["probe"]
    size = [] if train_size is None else ["--train-size", str(train_size)]
    run = train_cli(db_url, "--data", "imagefolder", "--data-root", digits_folder, "--workers", "2", *size,
                    epochs=2 if train_size is None else 6)
    assert run["final_val_acc"] > 0.5, run


def write_cifar(root: Path, name: str, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                classes: list[str]) -> None:
    """The real pickle layouts (`cifar-10-batches-py`: data_batch_1..5, test_batch, batches.meta;
    `cifar-100-python`: train, test, meta), images as rows of 3,072 bytes (R, G, B planes of 32x32),
    the training images in class order (the harness must not depend on the files' order)."""
    def rows_of(x: np.ndarray) -> np.ndarray:  # [N, 3, 32, 32] uint8 -> [N, 3072]
        return x.reshape(len(x), -1)

    def dump(path: Path, obj: dict) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f)

    (xt, yt), (xv, yv) = train, test
    by_class = np.argsort(yt, kind="stable")
    xt, yt = xt[by_class], yt[by_class]
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for b, idx in enumerate(np.array_split(np.arange(len(yt)), 5), 1):
            dump(folder / f"data_batch_{b}", {"data": rows_of(xt[idx]), "labels": yt[idx].tolist()})
        dump(folder / "test_batch", {"data": rows_of(xv), "labels": yv.tolist()})
        dump(folder / "batches.meta", {"label_names": classes})
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True)
        dump(folder / "train", {"data": rows_of(xt), "fine_labels": yt.tolist(), "coarse_labels": [0] * len(yt)})
        dump(folder / "test", {"data": rows_of(xv), "fine_labels": yv.tolist(), "coarse_labels": [0] * len(yv)})
        dump(folder / "meta", {"fine_label_names": classes, "coarse_label_names": ["all"]})


@pytest.fixture
def cifar_files_without_md5(monkeypatch):
    """torchvision checks each CIFAR file's MD5 against the published archive's: files written here
    cannot match, so only that comparison is replaced (the files must still exist); the parsing is
    torchvision's own."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))


def test_cifar10_files_train_end_to_end(tmp_path, db_url, cifar_files_without_md5):
    x, y = digits_arrays()
    x32 = np.repeat(np.array([np.array(Image.fromarray(im).resize((32, 32), Image.BILINEAR)) for im in x])[:, None], 3, 1)
    train, val = seeded_split(len(y))
    write_cifar(tmp_path, "cifar10", (x32[train], y[train]), (x32[val], y[val]), [f"digit {i}" for i in range(10)])
    spec = DataSpec(name="cifar10", root=tmp_path, image_size=16, train_size=500)
    seen = assert_every_class_everywhere(spec, 10)
    # The official test set is the test split; val is carved out of the official train set (a fifth of it).
    assert (sum(seen["train"]), sum(seen["val"]), sum(seen["test"])) == (500, round(len(train) * 0.2), 360)
    run = train_cli(db_url, "--data", "cifar10", "--data-root", tmp_path, "--train-size", "500", epochs=6)
    assert run["final_val_acc"] > 0.5 and run["n_test"] == 360 and run["test_acc"] > 0.5, run


def test_cifar100_files_train_end_to_end(tmp_path, db_url, cifar_files_without_md5):
    """100 classes of harness's generated patterns (digits has 10), written as CIFAR-100."""
    gen = data_mod.load_synthetic(DataSpec(name="synthetic", num_classes=100, image_size=32, train_size=3000))
    write_cifar(tmp_path, "cifar100", (gen.train.x.numpy(), gen.train.y.numpy()),
                (gen.val.x.numpy(), gen.val.y.numpy()), [f"pattern {i}" for i in range(100)])
    spec = DataSpec(name="cifar100", root=tmp_path, image_size=16)
    assert_every_class_everywhere(spec, 100)
    run = train_cli(db_url, "--data", "cifar100", "--data-root", tmp_path, epochs=4)
    assert run["final_val_acc"] > 0.1, run  # chance is 0.01


def test_tinyimagenet_layout_maps_val_labels_through_annotations(tmp_path, db_url):
    """tiny-imagenet-200: train/<wnid>/images/*.JPEG, val/images/*.JPEG labelled by val_annotations.txt.
    The wnids are named so that their sorted order (the class index) differs from the digit they hold,
    and the annotation lines are shuffled: only a correct mapping trains above chance."""
    x, y = digits_arrays()
    wnid = {d: f"n{(7 * d + 3) % 10:02d}{d}" for d in range(10)}  # sorted order != digit order
    root = tmp_path / "tiny-imagenet-200"
    train, val = seeded_split(len(y))
    for i in train:
        folder = root / "train" / wnid[y[i]] / "images"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).convert("RGB").save(folder / f"{wnid[y[i]]}_{i}.JPEG", quality=95)
    (root / "val" / "images").mkdir(parents=True)
    lines = []
    for i in val:
        Image.fromarray(x[i]).convert("RGB").save(root / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{wnid[y[i]]}\t0\t0\t8\t8")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "wnids.txt").write_text("\n".join(wnid.values()) + "\n")

    spec = DataSpec(name="tinyimagenet", root=tmp_path, image_size=16, workers=0)
    assert_every_class_everywhere(spec, 10)
    ds = data_mod.load(spec, torch.device("cpu"))
    index = {w: k for k, w in enumerate(ds.class_names)}
    assert ds.class_names == sorted(wnid.values())
    expected = {f"val_{i}.JPEG": index[wnid[y[i]]] for i in val}
    # The labelled val/ is the test split (the official test has no labels); val is carved out of train/.
    assert {Path(p).name: label for p, label in ds.test.dataset.samples} == expected
    assert all(Path(p).parent.name == "images" and "train" in Path(p).parts for p, _ in ds.val.dataset.samples)
    run = train_cli(db_url, "--data", "tinyimagenet", "--data-root", tmp_path, "--workers", "0")
    assert run["final_val_acc"] > 0.5, run
