"""Tiny fake datasets in each official on-disk format, for tests (`from fakedata import ...`).

Formats: CIFAR-10 / CIFAR-100 python pickles (`cifar-10-batches-py`, `cifar-100-python`), STL-10
binaries (`stl10_binary`), the `tiny-imagenet-200` folder tree, and an ImageNet-LT folder with
its split lists and JPEGs. Only the sizes differ from the releases (so published md5s differ too).
Pixels are random; labels are interleaved so pool order matters.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]
CIFAR100_COARSE_NAMES = [
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
]
# The official CIFAR-100 superclass of each fine label 0..99 (as stored in the release pickles).
CIFAR100_COARSE_OF_FINE = [
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
]
STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]


@dataclass
class FakeSplits:
    """What a writer wrote: uint8 (n, H, W, 3) images and labels of each split, in file order."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_fine: np.ndarray | None = None  # CIFAR-100 fine labels of the training images


def _labels(rng: np.random.Generator, num_classes: int, per_class: int) -> np.ndarray:
    return rng.permutation(np.repeat(np.arange(num_classes), per_class)).astype(np.int64)


def _pixels(rng: np.random.Generator, n: int, side: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(n, 32, 32, 3) -> official rows (n, 3072): red plane, green plane, blue plane."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), -1))


def write_fake_cifar10(root: Path, per_class: int = 3, test_per_class: int = 2,
                       seed: int = 0) -> FakeSplits:
    """`root/cifar-10-batches-py`: data_batch_1..5, test_batch, batches.meta (official keys)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    fake = FakeSplits(_pixels(rng, 10 * per_class, 32), _labels(rng, 10, per_class),
                      _pixels(rng, 10 * test_per_class, 32), _labels(rng, 10, test_per_class))
    chunks = np.array_split(np.arange(len(fake.train_labels)), 5)
    for k, rows in enumerate(chunks, start=1):
        _pickle(folder / f"data_batch_{k}", {
            "batch_label": f"training batch {k} of 5",
            "labels": fake.train_labels[rows].tolist(),
            "data": _cifar_rows(fake.train_images[rows]),
            "filenames": [f"img_{i}.png" for i in rows]})
    _pickle(folder / "test_batch", {
        "batch_label": "testing batch 1 of 1", "labels": fake.test_labels.tolist(),
        "data": _cifar_rows(fake.test_images),
        "filenames": [f"test_{i}.png" for i in range(len(fake.test_labels))]})
    _pickle(folder / "batches.meta", {"num_cases_per_batch": 10000,
                                      "label_names": CIFAR10_NAMES, "num_vis": 3072})
    return fake


def write_fake_cifar100(root: Path, per_fine: int = 1, test_per_fine: int = 1,
                        seed: int = 0) -> FakeSplits:
    """`root/cifar-100-python`: train, test, meta, with fine and official coarse labels."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    coarse_of = np.asarray(CIFAR100_COARSE_OF_FINE)
    fine_train, fine_test = _labels(rng, 100, per_fine), _labels(rng, 100, test_per_fine)
    fake = FakeSplits(_pixels(rng, len(fine_train), 32), coarse_of[fine_train],
                      _pixels(rng, len(fine_test), 32), coarse_of[fine_test], fine_train)
    for name, images, fine in (("train", fake.train_images, fine_train),
                               ("test", fake.test_images, fine_test)):
        _pickle(folder / name, {
            "filenames": [f"{name}_{i}.png" for i in range(len(fine))],
            "batch_label": f"{name}ing batch 1 of 1", "fine_labels": fine.tolist(),
            "coarse_labels": coarse_of[fine].tolist(), "data": _cifar_rows(images)})
    _pickle(folder / "meta", {"fine_label_names": [f"fine_{i}" for i in range(100)],
                              "coarse_label_names": CIFAR100_COARSE_NAMES})
    return fake


def _stl_bytes(images: np.ndarray) -> bytes:
    """(n, 96, 96, 3) -> the official layout: per image 3 x 96 x 96, channels column-major."""
    return np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes()


def write_fake_stl10(root: Path, train_per_class: int = 2, test_per_class: int = 3,
                     unlabeled: int = 2, seed: int = 0) -> FakeSplits:
    """`root/stl10_binary`: {train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt, folds."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    fake = FakeSplits(_pixels(rng, 10 * train_per_class, 96), _labels(rng, 10, train_per_class),
                      _pixels(rng, 10 * test_per_class, 96), _labels(rng, 10, test_per_class))
    for split, images, labels in (("train", fake.train_images, fake.train_labels),
                                  ("test", fake.test_images, fake.test_labels)):
        (folder / f"{split}_X.bin").write_bytes(_stl_bytes(images))
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
    (folder / "unlabeled_X.bin").write_bytes(_stl_bytes(_pixels(rng, unlabeled, 96)))
    (folder / "class_names.txt").write_text("\n".join(STL10_NAMES) + "\n")
    folds = [" ".join(str(i) for i in range(k, len(fake.train_labels), 10)) for k in range(10)]
    (folder / "fold_indices.txt").write_text("\n".join(folds) + "\n")
    return fake


def _jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int], grey: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    (img.convert("L") if grey else img).save(path, format="JPEG", quality=90)


def write_fake_tiny_imagenet(root: Path, per_class: int = 2, val_per_class: int = 1,
                             num_classes: int = 200, seed: int = 0) -> Path:
    """`root/tiny-imagenet-200`: wnids.txt, words.txt, train/<wnid>/images, val/ with annotations.

    wnids.txt is unsorted (as released); the first image of each class is greyscale.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    wnids = [f"n{1000000 + 7919 * k:08d}" for k in rng.permutation(num_classes)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\tthing {w}\n" for w in wnids))
    for wnid in wnids:
        boxes = []
        for k in range(per_class):
            _jpeg(folder / "train" / wnid / "images" / f"{wnid}_{k}.JPEG", rng, (64, 64), k == 0)
            boxes.append(f"{wnid}_{k}.JPEG\t0\t0\t63\t63\n")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    notes = []
    for j, c in enumerate(_labels(rng, num_classes, val_per_class)):
        _jpeg(folder / "val" / "images" / f"val_{j}.JPEG", rng, (64, 64))
        notes.append(f"val_{j}.JPEG\t{wnids[c]}\t0\t0\t63\t63\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(notes))
    (folder / "test" / "images").mkdir(parents=True, exist_ok=True)
    return folder


def write_fake_imagenet_lt(root: Path, counts: Sequence[int], test_per_class: int = 1,
                           size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    """`root/imagenet_lt`: ImageNet_LT_{train,test}.txt ('<path> <label>') and their JPEGs.

    Class c has counts[c] training images; list lines are shuffled; images are size (w, h).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "imagenet_lt"
    wnids = [f"n{2000000 + 31 * c:08d}" for c in range(len(counts))]
    train = [f"train/{wnids[c]}/{wnids[c]}_{k}.JPEG {c}"
             for c, n in enumerate(counts) for k in range(n)]
    test = [f"val/{wnids[c]}/ILSVRC2012_val_{c * 1000 + k:08d}.JPEG {c}"
            for c in range(len(counts)) for k in range(test_per_class)]
    for name, lines in (("ImageNet_LT_train.txt", train), ("ImageNet_LT_test.txt", test)):
        lines = [lines[i] for i in rng.permutation(len(lines))]
        for line in lines:
            _jpeg(folder / line.rsplit(maxsplit=1)[0], rng, size)
        (folder / name).write_text("\n".join(lines) + "\n")
    return folder


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as on yann.lecun.com: magic (0, 0, 0x08 = ubyte, ndim), big-endian dims, data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fake_mnist(root: Path, counts: Sequence[int], test_counts: Sequence[int],
                     seed: int = 0) -> FakeSplits:
    """`root/MNIST/raw`: the four uncompressed IDX files torchvision extracts (28x28 grey).

    Images are returned as stored, uint8 (n, 28, 28); labels shuffled so pool order matters.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "MNIST" / "raw"

    def split(per_class: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.repeat(np.arange(len(per_class)), per_class)).astype(np.int64)
        return rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8), labels

    (train_x, train_y), (test_x, test_y) = split(counts), split(test_counts)
    for prefix, images, labels in (("train", train_x, train_y), ("t10k", test_x, test_y)):
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return FakeSplits(train_x, train_y, test_x, test_y)
