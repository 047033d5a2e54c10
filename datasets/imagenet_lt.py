"""ImageNet-LT (Liu et al., CVPR 2019): the fixed split list `ImageNet_LT_train.txt` over ImageNet.

Pool = the images of the split list in file order, labels from the list; the imbalance is fixed
by the file (1280 down to 5 per class), so the only IR is `native` and the LT subset is the whole
list grouped by class (datasets.md section 3). ImageNet cannot be downloaded automatically.

Build choice (layout): `<root>/imagenet_lt/` holds `ImageNet_LT_train.txt` and
`ImageNet_LT_test.txt` (OLTR release), and ImageNet's `train/` and `val/` folders (val sorted into
wnid folders), linked or copied there, so the paths in the lists resolve below that folder.
Build choice (pixels): 224 px, shorter side resized to 224 then centre crop, decoded at load.
Class names are the wnids, read from the image paths of the list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness import lt
from harness.data.base import DatasetPlugin
from harness.data.files import (corrupt_file, expect_per_class, load_image_files, missing_files,
                                prepare_command)
from harness.errors import HarnessError
from harness.registry import register_dataset

FOLDER = "imagenet_lt"
TRAIN_LIST = "ImageNet_LT_train.txt"
TEST_LIST = "ImageNet_LT_test.txt"
OLTR = "github.com/zhmiao/OpenLongTailRecognition-OLTR"


@register_dataset("imagenet_lt")
class ImageNetLT(DatasetPlugin):
    description = "ImageNet-LT train split list (1000 classes, 1280 to 5 per class, 224 px)"
    num_classes = 1000
    n_max = 1280
    n_min: ClassVar[int] = 5
    train_size: ClassVar[int] = 115846  # standard size of ImageNet_LT_train.txt (checked by verify)
    test_per_class: ClassVar[int] = 50
    image_size = 224
    pool_description = "ImageNet_LT_train.txt, file order"
    class_names = ()
    irs = ("native",)
    group_scheme = "shots"  # many (> 100) / medium (20-100) / few (< 20) shots, as is usual
    eval_splits = ("lt_train", "test")
    many_shot: ClassVar[int] = 100  # head: more than 100 training images
    few_shot: ClassVar[int] = 20  # tail: fewer than 20; medium: 20 to 100

    def __init__(self, root: Path | None = None, image_size: int | None = None) -> None:
        super().__init__(root, image_size)
        self._lists: dict[str, tuple[list[str], np.ndarray]] = {}

    @property
    def folder(self) -> Path:
        return self.root / FOLDER

    def _how(self) -> str:
        return (f"ImageNet cannot be downloaded automatically: put {TRAIN_LIST} and {TEST_LIST} "
                f"(OLTR release, {OLTR}) in {self.folder}, link ImageNet's train/ and val/ "
                f"(val in wnid folders) there, and run {prepare_command(self.name, self.root)}")

    # -- files -------------------------------------------------------------------------------
    def check(self) -> None:
        if not (self.folder / TRAIN_LIST).is_file():
            raise missing_files(self.name, self.folder / TRAIN_LIST, self.root, self._how())

    def prepare(self, download: bool = True, verify: bool = True) -> None:
        # No published checksums; `verify` checks that the list is the standard split instead.
        self.check()
        paths, labels = self._read_list(TRAIN_LIST)
        counts = np.bincount(labels, minlength=self.num_classes)
        if verify and (len(labels) != self.train_size or counts.max() != self.n_max
                       or counts.min() != self.n_min):
            raise corrupt_file(self.name, self.folder / TRAIN_LIST, self.root,
                               f"{len(labels)} images with {counts.min()} to {counts.max()} per "
                               f"class, not the standard {self.train_size} with {self.n_min} to "
                               f"{self.n_max}", f"{self._how()}, or add --no-verify to use it")
        self._expect_images(paths)
        if (self.folder / TEST_LIST).is_file():
            self._expect_images(self._test_list()[0])

    def _expect_images(self, paths: list[str]) -> None:
        absent = [p for p in paths if not (self.folder / p).is_file()]
        if absent:
            raise missing_files(self.name, self.folder / absent[0], self.root,
                                f"{len(absent)} listed images are missing; {self._how()}")

    # -- reading -----------------------------------------------------------------------------
    def _read_list(self, name: str) -> tuple[list[str], np.ndarray]:
        """(relative image paths, labels) of a split list; sets `class_names` to the wnids."""
        if name in self._lists:
            return self._lists[name]
        path = self.folder / name
        if not path.is_file():
            raise missing_files(self.name, path, self.root, self._how())
        paths, labels, wnids = [], [], [""] * self.num_classes
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rel, label_text = line.rsplit(maxsplit=1)
                label = int(label_text)
            except ValueError:
                raise corrupt_file(self.name, path, self.root, f"line {number} is not "
                                   f"'<path> <label>'", self._how()) from None
            wnid = Path(rel).parent.name
            if not 0 <= label < self.num_classes or wnids[label] not in ("", wnid):
                raise corrupt_file(self.name, path, self.root, f"line {number}: label {label} "
                                   f"does not fit its folder {wnid}", self._how())
            wnids[label] = wnid
            paths.append(rel)
            labels.append(label)
        if "" in wnids:
            raise corrupt_file(self.name, path, self.root,
                               f"class {wnids.index('')} has no image", self._how())
        if self.class_names and self.class_names != tuple(wnids):
            raise corrupt_file(self.name, path, self.root,
                               f"its label -> wnid pairs differ from those of {TRAIN_LIST}",
                               self._how())
        self.class_names = tuple(wnids)
        self._lists[name] = (paths, np.array(labels, dtype=np.int64))
        return self._lists[name]

    def _test_list(self) -> tuple[list[str], np.ndarray]:
        paths, labels = self._read_list(TEST_LIST)
        expect_per_class(self.name, self.root, labels, self.num_classes, self.test_per_class,
                         self.folder / TEST_LIST)
        return paths, labels

    # -- pool and LT subset ------------------------------------------------------------------
    def pool_labels(self) -> np.ndarray:
        return self._read_list(TRAIN_LIST)[1]

    def lt_counts(self, ir: Any) -> list[int]:
        """Per-class counts fixed by the split list (needs the list file)."""
        if lt.parse_ir(ir) != "native":
            raise HarnessError(f"dataset '{self.name}' has a fixed imbalance: use ir 'native'")
        return np.bincount(self.pool_labels(), minlength=self.num_classes).tolist()

    def class_groups(self, counts: Any) -> np.ndarray:
        """'head' / 'medium' / 'tail' per class by training shots (> 100, 20..100, < 20)."""
        counts = np.asarray(counts)
        return np.where(counts > self.many_shot, "head",
                        np.where(counts < self.few_shot, "tail", "medium"))

    def load_images(self, indices: np.ndarray) -> np.ndarray:
        paths, _ = self._read_list(TRAIN_LIST)
        idx = np.asarray(indices, dtype=np.int64)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(paths)):
            raise HarnessError(f"dataset '{self.name}': pool indices must lie in "
                               f"[0, {len(paths)}); the LT manifest does not belong to these files")
        return load_image_files(self.name, self.root, [self.folder / paths[i] for i in idx],
                                self.image_size, self._how())

    def test_split(self) -> tuple[np.ndarray, np.ndarray]:
        paths, labels = self._test_list()
        images = load_image_files(self.name, self.root, [self.folder / p for p in paths],
                                  self.image_size, self._how())
        return images, labels
