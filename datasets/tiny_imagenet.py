"""Tiny-ImageNet (200 classes x 500, 64 px), read from the official `tiny-imagenet-200` folder.

Pool (datasets.md section 3, inferred from MiniClustering): `ImageFolder(tiny-imagenet-200/train)`
order, i.e. classes sorted by folder name (wnid), files sorted within a class; the scan is
torchvision's own (`find_classes`, `make_dataset`). The folder is not downloaded: unzip the
official archive into the data root. Build choice: the labelled `val` split (50 per class, labels
from `val/val_annotations.txt`, in that file's order) serves as the balanced held-out split.
Build choice: without the files, class names are `class<i>` (the wnids are only known from
`wnids.txt`); with them, the wnids in ImageFolder order.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from harness.data.base import DatasetPlugin
from harness.data.files import (corrupt_file, expect_per_class, load_image_files, missing_files,
                                prepare_command)
from harness.errors import HarnessError
from harness.registry import register_dataset

FOLDER = "tiny-imagenet-200"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@register_dataset("tinyimagenet")
class TinyImageNet(DatasetPlugin):
    description = "Tiny-ImageNet train split in ImageFolder order (200 classes x 500, 64 px)"
    num_classes = 200
    n_max = 500  # the head class keeps all 500 training images of its class
    image_size = 64
    pool_description = "ImageFolder(tiny-imagenet-200/train)"
    class_names = tuple(f"class{i}" for i in range(200))
    eval_splits = ("lt_train", "test")
    pool_per_class: ClassVar[int] = 500
    test_per_class: ClassVar[int] = 50

    def __init__(self, root: Path | None = None, image_size: int | None = None) -> None:
        super().__init__(root, image_size)
        self._samples: list[tuple[str, int]] | None = None
        if self._wnids_file.is_file():
            self.class_names = tuple(sorted(self._wnids_file.read_text().split()))

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    @property
    def _wnids_file(self) -> Path:
        return self.folder / "wnids.txt"

    def _how(self) -> str:
        return (f"unzip the official archive {URL} into {self.root} and run "
                f"{prepare_command(self.name, self.root)}")

    # -- files -------------------------------------------------------------------------------
    def check(self) -> None:
        for path in (self._wnids_file, self.folder / "train"):
            if not path.exists():
                raise missing_files(self.name, path, self.root, self._how())

    def prepare(self, download: bool = True, verify: bool = True) -> None:
        # No published per-file checksums: `verify` has nothing to hash here; the scan checks
        # the class list and the per-class counts of both splits.
        self.check()
        self.pool_labels()
        self._val_samples()

    # -- reading -----------------------------------------------------------------------------
    def _scan(self) -> list[tuple[str, int]]:
        if self._samples is None:
            self.check()
            train = self.folder / "train"
            classes, class_to_idx = find_classes(train)
            if tuple(classes) != tuple(sorted(self._wnids_file.read_text().split())) \
                    or len(classes) != self.num_classes:
                raise corrupt_file(self.name, train, self.root,
                                   f"{len(classes)} class folders that do not match wnids.txt",
                                   self._how())
            samples = make_dataset(train, class_to_idx, extensions=IMG_EXTENSIONS,
                                   allow_empty=True)
            labels = np.array([label for _, label in samples], dtype=np.int64)
            expect_per_class(self.name, self.root, labels, self.num_classes,
                             self.pool_per_class, train)
            self.class_names = tuple(classes)
            self._samples = samples
        return self._samples

    def _val_samples(self) -> list[tuple[Path, int]]:
        """(image path, label) of the val split, in `val_annotations.txt` order."""
        notes = self.folder / "val" / "val_annotations.txt"
        if not notes.is_file():
            raise missing_files(self.name, notes, self.root, self._how())
        class_to_idx = {wnid: i for i, wnid in enumerate(self.class_names)}
        samples = []
        for number, line in enumerate(notes.read_text().splitlines(), start=1):
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in class_to_idx:
                raise corrupt_file(self.name, notes, self.root,
                                   f"line {number} has no known wnid", self._how())
            samples.append((self.folder / "val" / "images" / fields[0], class_to_idx[fields[1]]))
        labels = np.array([label for _, label in samples], dtype=np.int64)
        expect_per_class(self.name, self.root, labels, self.num_classes, self.test_per_class,
                         notes)
        return samples

    # -- pool --------------------------------------------------------------------------------
    def pool_labels(self) -> np.ndarray:
        return np.array([label for _, label in self._scan()], dtype=np.int64)

    def load_images(self, indices: np.ndarray) -> np.ndarray:
        samples = self._scan()
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(samples)):
            raise HarnessError(f"dataset '{self.name}': pool indices must lie in [0, "
                               f"{len(samples)}); the LT manifest does not belong to these files")
        paths = [Path(samples[i][0]) for i in idx]
        return load_image_files(self.name, self.root, paths, self.image_size, self._how())

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        self._scan()  # class names in ImageFolder order
        samples = self._val_samples()
        images = load_image_files(self.name, self.root, [p for p, _ in samples],
                                  self.image_size, self._how())
        return images, np.array([label for _, label in samples], dtype=np.int64)
