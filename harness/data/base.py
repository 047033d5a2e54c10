"""Dataset plugin contract and the in-memory LT subset every method trains on.

A dataset plugin yields its *pool* (the images the LT subset is cut from) in pool order as uint8
arrays at the dataset's image size. The LT subset is one uint8 tensor (N, 3, H, W): methods
normalise and augment it themselves (datasets.md section 6).
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from harness import lt
from harness.errors import HarnessError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_data_root() -> Path:
    """`HARNESS_DATA_ROOT`, else `~/.cache/harness/data`."""
    env = os.environ.get("HARNESS_DATA_ROOT")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "harness" / "data"


class DatasetPlugin(abc.ABC):
    """Base class of dataset plugins; subclasses register with `@register_dataset(name)`.

    Class attributes describe the dataset without touching files (`harness describe` uses them).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    num_classes: ClassVar[int] = 0
    n_max: ClassVar[int] = 0
    image_size: ClassVar[int] = 32
    pool_description: ClassVar[str] = "train"
    class_names: ClassVar[tuple[str, ...]] = ()
    mean: ClassVar[tuple[float, float, float]] = IMAGENET_MEAN
    std: ClassVar[tuple[float, float, float]] = IMAGENET_STD
    irs: ClassVar[tuple[Any, ...]] = (1, 5, 10, 100)
    eval_splits: ClassVar[tuple[str, ...]] = ("lt_train",)
    needs_files: ClassVar[bool] = True
    resizable: ClassVar[bool] = False  # data.image_size may differ (always allowed without files)
    group_scheme: ClassVar[str] = "terciles"  # head/medium/tail: class terciles, or "shots"

    def __init__(self, root: Path | None = None, image_size: int | None = None) -> None:
        self.root = Path(root) if root is not None else default_data_root()
        if image_size is not None and image_size != type(self).image_size:
            if self.needs_files and not self.resizable:
                raise HarnessError(f"dataset '{self.name}' has a fixed image size of "
                                   f"{type(self).image_size}; remove data.image_size")
            self.image_size = int(image_size)  # type: ignore[misc]

    # -- files -------------------------------------------------------------------------------
    def prepare(self, download: bool = True, verify: bool = True) -> None:
        """Check (and download where allowed) the files; raise `DatasetFilesError` if unusable.

        `verify=False` skips published checksums (structure and class counts are still checked).
        """

    def check(self) -> None:
        """Raise `DatasetFilesError` naming the expected path and the `harness prepare` command."""

    # -- pool --------------------------------------------------------------------------------
    @abc.abstractmethod
    def pool_labels(self) -> np.ndarray:
        """Labels of the whole pool, int64, in pool order."""

    @abc.abstractmethod
    def load_images(self, indices: np.ndarray) -> np.ndarray:
        """Pool images at `indices` as uint8 (n, H, W, 3) at `image_size`."""

    def test_split(self) -> tuple[np.ndarray, np.ndarray] | None:
        """A balanced held-out split (uint8 images, labels) where one exists, else None."""
        return None

    # -- LT subset ---------------------------------------------------------------------------
    @classmethod
    def check_ir(cls, ir: Any) -> float | str:
        """Parse an IR and check that it suits the dataset: 'native' only for fixed splits, a
        number only up to n_max (so that every class keeps one image)."""
        value = lt.parse_ir(ir)
        native_only = tuple(cls.irs) == ("native",)
        if native_only and value != "native":
            raise HarnessError(f"dataset '{cls.name}' has a fixed imbalance: use IR native")
        if not native_only and value == "native":
            raise HarnessError(f"dataset '{cls.name}' needs a numeric IR >= 1 (e.g. "
                               f"{', '.join(map(str, cls.irs))}); 'native' is for fixed splits")
        if value != "native":
            try:
                lt.check_fits(cls.n_max, float(value))
            except HarnessError as exc:
                raise HarnessError(f"dataset '{cls.name}': {exc}") from None
        return value

    def lt_counts(self, ir: Any) -> list[int]:
        """Per-class counts of the LT subset at `ir` (no files needed)."""
        return lt.lt_counts(self.num_classes, self.n_max, float(lt.parse_ir(ir)))

    def manifest(self, ir: Any, cache: Path | None = None) -> dict[str, Any]:
        """The LT manifest at `ir`: read from the cache, else built from the pool and written."""
        ir = lt.parse_ir(ir)
        path = lt.manifest_path(cache or self.root, self.name, ir) if self.needs_files else None
        if path is not None and path.exists():
            return lt.read_manifest(path)
        man = lt.build_manifest(self.name, self.pool_description, self.pool_labels(),
                                self.num_classes, self.n_max, ir)
        if path is not None:
            lt.write_manifest(man, path)
        return man


@dataclass
class LTData:
    """The LT subset in memory: one uint8 tensor, labels, and what methods need to know."""

    name: str
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    manifest: dict[str, Any]
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def to_chw_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (n, H, W, 3) array -> contiguous uint8 (n, 3, H, W) tensor (one copy)."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise HarnessError(f"dataset plugin returned images {images.dtype}{images.shape}; "
                           "expected uint8 (n, H, W, 3)")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def load_lt(plugin: DatasetPlugin, ir: Any, split: str = "lt_train") -> LTData:
    """Load the LT subset (`lt_train`) or the balanced `test` split of a dataset plugin."""
    if split == "lt_train":
        man = plugin.manifest(ir)
        idx = np.asarray(man["indices"], dtype=np.int64)
        images = plugin.load_images(idx)
        labels = np.asarray(man["labels"], dtype=np.int64)
    elif split == "test":
        test = plugin.test_split()
        if test is None:
            raise HarnessError(f"dataset '{plugin.name}' has no balanced test split; "
                               f"use protocol split 'lt_train'")
        images, labels = test
        man = {"sha256": None, "counts": np.bincount(labels, minlength=plugin.num_classes).tolist()}
    else:
        raise HarnessError(f"unknown evaluation split {split!r}: use 'lt_train' or 'test'")
    if len(images) != len(labels):
        raise HarnessError(f"dataset '{plugin.name}' returned {len(images)} images for "
                           f"{len(labels)} labels: the files are corrupt or truncated")
    return LTData(plugin.name, to_chw_tensor(images), torch.from_numpy(labels), man,
                  plugin.num_classes, plugin.class_names, plugin.mean, plugin.std)
