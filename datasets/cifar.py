"""CIFAR-10 and CIFAR-20 (CIFAR-100 mapped to its 20 superclasses), from the official pickles.

Pools (datasets.md section 3): the official training set only (50k); the 10k test set is the
optional balanced held-out split. File names, md5s and download URLs are torchvision's
(`CIFAR10` / `CIFAR100` class attributes) and the files live where torchvision keeps them
(`<root>/cifar-10-batches-py`, `<root>/cifar-100-python`).

Build choice: the pickles are read here, in the same format torchvision reads them, rather than
through `torchvision.datasets.CIFAR10`, because that class re-hashes every file on each
construction (so a file that is not byte-identical to the release cannot be used even on request),
keeps the whole 50k pool in memory and does not expose CIFAR-100's coarse labels. Checksums are
verified by `prepare` (`verify=False` skips them); loading checks shapes and per-class counts, so a
truncated file is an error, never a smaller pool. `load_images` reads one batch file at a time
and keeps only the requested images: one uint8 array, no float copies.
"""

from __future__ import annotations

import abc
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10
from torchvision.datasets import CIFAR100 as TorchvisionCIFAR100

from harness.data.base import DatasetPlugin
from harness.data.files import (corrupt_file, download_archive, expect_per_class, missing_files,
                                prepare_command, verify_md5)
from harness.errors import HarnessError
from harness.registry import register_dataset

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")
CIFAR20_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)
ROW = 3 * 32 * 32  # one image per pickle row: 1024 red, 1024 green, 1024 blue values, row-major


class _Cifar(DatasetPlugin):
    """Shared reader of the CIFAR python pickles; subclasses pick the files and the labels."""

    torchvision_class: ClassVar[Any]
    meta_names_key: ClassVar[str]
    pool_per_class: ClassVar[int]
    test_per_class: ClassVar[int]
    image_size = 32
    pool_description = "official train split (50k)"
    eval_splits = ("lt_train", "test")

    def __init__(self, root: Path | None = None, image_size: int | None = None) -> None:
        super().__init__(root, image_size)
        self._pool_labels: np.ndarray | None = None

    @property
    def folder(self) -> Path:
        return self.root / self.torchvision_class.base_folder

    def _split_files(self, split: str) -> list[tuple[Path, str]]:
        tv = self.torchvision_class
        listing = tv.train_list if split == "train" else tv.test_list
        return [(self.folder / name, md5) for name, md5 in listing]

    def _all_files(self) -> list[tuple[Path, str]]:
        meta = self.torchvision_class.meta
        return (self._split_files("train") + self._split_files("test")
                + [(self.folder / meta["filename"], meta["md5"])])

    # -- files -------------------------------------------------------------------------------
    def check(self) -> None:
        for path, _ in self._split_files("train"):
            if not path.is_file():
                raise missing_files(self.name, path, self.root)

    def prepare(self, download: bool = True, verify: bool = True) -> None:
        missing = [path for path, _ in self._all_files() if not path.is_file()]
        if missing and not download:
            raise missing_files(self.name, missing[0], self.root,
                                f"put the official files there or run "
                                f"{prepare_command(self.name, self.root)} without --no-download")
        if missing:
            tv = self.torchvision_class
            download_archive(self.name, self.root, tv.url, tv.filename, tv.tgz_md5)
        if verify:
            verify_md5(self.name, self.root, self._all_files())
        self._check_meta()
        self.pool_labels()
        self._read_split("test", None, self.test_per_class)

    def _check_meta(self) -> None:
        path = self._all_files()[-1][0]
        names = tuple(self._unpickle(path).get(self.meta_names_key, ()))
        if names != self.class_names:
            raise corrupt_file(self.name, path, self.root,
                               f"'{self.meta_names_key}' is {names[:3]}..., not the official names")

    # -- reading -----------------------------------------------------------------------------
    def _unpickle(self, path: Path) -> dict[str, Any]:
        try:
            with open(path, "rb") as fh:
                entry = pickle.load(fh, encoding="latin1")
        except FileNotFoundError:
            raise missing_files(self.name, path, self.root) from None
        except Exception as exc:  # a damaged pickle can raise nearly any exception type
            raise corrupt_file(self.name, path, self.root, f"{type(exc).__name__}: {exc}") from None
        if not isinstance(entry, dict):
            raise corrupt_file(self.name, path, self.root, "not a CIFAR python pickle")
        return entry

    @abc.abstractmethod
    def _labels_from(self, entry: dict[str, Any], path: Path) -> np.ndarray:
        """Labels of one pickle (fine labels for CIFAR-10, coarse superclasses for CIFAR-20)."""

    def _read_batch(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """(data rows uint8 (n, 3072), labels int64 (n,)) of one pickle, shape-checked."""
        entry = self._unpickle(path)
        data = entry.get("data")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
                or data.shape[1] != ROW:
            raise corrupt_file(self.name, path, self.root, "no uint8 (n, 3072) 'data' array")
        labels = self._labels_from(entry, path)
        if len(labels) != len(data):
            raise corrupt_file(self.name, path, self.root,
                               f"{len(data)} images but {len(labels)} labels")
        return data, labels

    def _read_split(self, split: str, wanted: np.ndarray | None,
                    per_class: int) -> tuple[np.ndarray | None, np.ndarray]:
        """Labels of a split and, given `wanted` (split positions), those images (n, 32, 32, 3).

        Batch files are read one at a time; only the wanted rows are copied out.
        """
        out = None if wanted is None else np.empty((len(wanted), 32, 32, 3), np.uint8)
        parts, offset = [], 0
        for path, _ in self._split_files(split):
            data, labels = self._read_batch(path)
            if out is not None:
                hit = np.flatnonzero((wanted >= offset) & (wanted < offset + len(labels)))
                out[hit] = data[wanted[hit] - offset].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            del data  # free this batch before the next one is read
            parts.append(labels)
            offset += len(labels)
        labels = np.concatenate(parts)
        expect_per_class(self.name, self.root, labels, self.num_classes, per_class, self.folder)
        return out, labels

    # -- pool --------------------------------------------------------------------------------
    def pool_labels(self) -> np.ndarray:
        if self._pool_labels is None:
            self.check()
            self._pool_labels = self._read_split("train", None, self.pool_per_class)[1]
        return self._pool_labels

    def load_images(self, indices: np.ndarray) -> np.ndarray:
        size = len(self.pool_labels())
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= size):
            raise HarnessError(f"dataset '{self.name}': pool indices must lie in [0, {size}); "
                               f"the LT manifest does not belong to these files")
        images, _ = self._read_split("train", idx, self.pool_per_class)
        assert images is not None
        return images

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        for path, _ in self._split_files("test"):
            if not path.is_file():
                raise missing_files(self.name, path, self.root)
        _, labels = self._read_split("test", None, self.test_per_class)
        images, _ = self._read_split("test", np.arange(len(labels)), self.test_per_class)
        assert images is not None
        return images, labels


@register_dataset("cifar10")
class Cifar10(_Cifar):
    description = "CIFAR-10, official train split (10 classes x 5000, 32 px)"
    num_classes = 10
    n_max = 5000
    pool_per_class = 5000
    test_per_class = 1000
    class_names = CIFAR10_NAMES
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2023, 0.1994, 0.2010)
    torchvision_class = TorchvisionCIFAR10
    meta_names_key = "label_names"

    def _labels_from(self, entry: dict[str, Any], path: Path) -> np.ndarray:
        if "labels" not in entry:
            raise corrupt_file(self.name, path, self.root, "no 'labels' list")
        return np.asarray(entry["labels"], dtype=np.int64)


@register_dataset("cifar20")
class Cifar20(_Cifar):
    """Label = the official CIFAR-100 coarse label stored in the pickles (build choice, spec 3)."""

    description = "CIFAR-100 train split with its 20 superclasses as labels (20 x 2500, 32 px)"
    num_classes = 20
    n_max = 2500  # each superclass has 2500 training images: the head class keeps all of them
    pool_per_class = 2500
    test_per_class = 500
    class_names = CIFAR20_NAMES
    mean = (0.5071, 0.4867, 0.4408)
    std = (0.2675, 0.2565, 0.2761)
    torchvision_class = TorchvisionCIFAR100
    meta_names_key = "coarse_label_names"
    fine_per_coarse: ClassVar[int] = 5

    def _labels_from(self, entry: dict[str, Any], path: Path) -> np.ndarray:
        if "coarse_labels" not in entry or "fine_labels" not in entry:
            raise corrupt_file(self.name, path, self.root, "no 'coarse_labels'/'fine_labels'")
        fine = np.asarray(entry["fine_labels"], dtype=np.int64)
        coarse = np.asarray(entry["coarse_labels"], dtype=np.int64)
        if len(fine) != len(coarse):
            raise corrupt_file(self.name, path, self.root, "fine and coarse label lists differ")
        self._mapping(fine, coarse, path)
        return coarse

    def _mapping(self, fine: np.ndarray, coarse: np.ndarray, path: Path) -> np.ndarray:
        """fine label -> superclass; checks one superclass per fine label, 5 fine per superclass."""
        pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
        n_fine = self.num_classes * self.fine_per_coarse
        if len(pairs) != n_fine or not np.array_equal(pairs[:, 0], np.arange(n_fine)) \
                or (np.bincount(pairs[:, 1], minlength=self.num_classes)
                    != self.fine_per_coarse).any():
            raise corrupt_file(self.name, path, self.root,
                               "fine labels do not map onto 20 superclasses of 5 fine classes")
        return pairs[:, 1]

    def fine_to_coarse(self) -> np.ndarray:
        """The (100,) fine -> superclass table read from the official training pickle."""
        self.check()
        path = self._split_files("train")[0][0]
        entry = self._unpickle(path)
        coarse = self._labels_from(entry, path)
        return self._mapping(np.asarray(entry["fine_labels"], dtype=np.int64), coarse, path)
