"""STL-10 from the official binaries: pool = `train` (5k) then `test` (8k), 1300 per class.

Files, md5s and the download URL are torchvision's (`STL10` class attributes), stored where
torchvision keeps them (`<root>/stl10_binary`). The 100k `unlabeled` split is not used
(datasets.md section 3), so it is neither required nor hashed.

Build choice: the binaries are read here with `np.memmap`, in the layout torchvision reads
(uint8, 3 x 96 x 96 per image, each channel stored column-major; labels 1..10), rather than
through `torchvision.datasets.STL10`, which requires and re-hashes the 2.7 GB unlabeled file on
every construction and loads whole splits. `load_images` copies only the requested images into
one uint8 array. There is no held-out split: STL-10's test split is inside the pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from torchvision.datasets import STL10 as TorchvisionSTL10

from harness.data.base import DatasetPlugin
from harness.data.files import (corrupt_file, download_archive, expect_per_class, missing_files,
                                prepare_command, verify_md5)
from harness.errors import HarnessError
from harness.registry import register_dataset

STL10_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck")
SIDE = 96
IMAGE_BYTES = 3 * SIDE * SIDE
POOL_SPLITS = ("train", "test")  # pool order: train images first, then test images


@register_dataset("stl10")
class STL10(DatasetPlugin):
    description = "STL-10 labelled train+test splits (10 classes x 1300, 96 px)"
    num_classes = 10
    n_max = 1300  # 500 train + 800 test images per class: the head class keeps all of them
    image_size = SIDE
    pool_description = "train+test (train images first)"
    class_names = STL10_NAMES
    eval_splits = ("lt_train",)
    split_per_class: ClassVar[dict[str, int]] = {"train": 500, "test": 800}

    def __init__(self, root: Path | None = None, image_size: int | None = None) -> None:
        super().__init__(root, image_size)
        self._labels: dict[str, np.ndarray] = {}

    @property
    def folder(self) -> Path:
        return self.root / TorchvisionSTL10.base_folder

    def _files(self) -> list[tuple[Path, str]]:
        """(path, md5) of the four files of the pool: X and y of train, X and y of test."""
        listing = [f for f in TorchvisionSTL10.train_list if f[0].startswith("train_")]
        listing += TorchvisionSTL10.test_list
        return [(self.folder / name, md5) for name, md5 in listing]

    def _path(self, split: str, kind: str) -> Path:
        return self.folder / f"{split}_{kind}.bin"

    # -- files -------------------------------------------------------------------------------
    def check(self) -> None:
        for path, _ in self._files():
            if not path.is_file():
                raise missing_files(self.name, path, self.root)

    def prepare(self, download: bool = True, verify: bool = True) -> None:
        missing = [path for path, _ in self._files() if not path.is_file()]
        if missing and not download:
            raise missing_files(self.name, missing[0], self.root,
                                f"put the official files there or run "
                                f"{prepare_command(self.name, self.root)} without --no-download")
        if missing:
            tv = TorchvisionSTL10
            download_archive(self.name, self.root, tv.url, tv.filename, tv.tgz_md5)
        if verify:
            verify_md5(self.name, self.root, self._files())
        names_file = self.folder / TorchvisionSTL10.class_names_file
        if names_file.is_file() and tuple(names_file.read_text().split()) != self.class_names:
            raise corrupt_file(self.name, names_file, self.root, "not the official class names")
        for split in POOL_SPLITS:
            self._images(split)  # checks the image file size against the label count

    # -- reading -----------------------------------------------------------------------------
    def _split_labels(self, split: str) -> np.ndarray:
        if split not in self._labels:
            path = self._path(split, "y")
            raw = np.fromfile(path, dtype=np.uint8).astype(np.int64) - 1  # stored as 1..10
            expect_per_class(self.name, self.root, raw, self.num_classes,
                             self.split_per_class[split], path)
            self._labels[split] = raw
        return self._labels[split]

    def _images(self, split: str) -> np.ndarray:
        """Memory-mapped (n, 3, 96, 96) stored array of a split; its size must match the labels."""
        n = len(self._split_labels(split))
        path = self._path(split, "X")
        size = path.stat().st_size
        if size != n * IMAGE_BYTES:
            raise corrupt_file(self.name, path, self.root,
                               f"{size} bytes, expected {n} images x {IMAGE_BYTES} bytes")
        return np.memmap(path, dtype=np.uint8, mode="r", shape=(n, 3, SIDE, SIDE))

    # -- pool --------------------------------------------------------------------------------
    def pool_labels(self) -> np.ndarray:
        self.check()
        return np.concatenate([self._split_labels(split) for split in POOL_SPLITS])

    def load_images(self, indices: np.ndarray) -> np.ndarray:
        self.check()
        idx = np.asarray(indices, dtype=np.int64)
        sizes = [len(self._split_labels(split)) for split in POOL_SPLITS]
        if len(idx) and (idx.min() < 0 or idx.max() >= sum(sizes)):
            raise HarnessError(f"dataset '{self.name}': pool indices must lie in [0, {sum(sizes)});"
                               f" the LT manifest does not belong to these files")
        out = np.empty((len(idx), SIDE, SIDE, 3), np.uint8)
        offset = 0
        for split, n in zip(POOL_SPLITS, sizes):
            hit = np.flatnonzero((idx >= offset) & (idx < offset + n))
            # stored [c, x, y] per image (column-major channels) -> [y, x, c]
            out[hit] = self._images(split)[idx[hit] - offset].transpose(0, 3, 2, 1)
            offset += n
        return out
