"""File helpers shared by the dataset plugins that read official on-disk formats.

Every problem with dataset files becomes one `DatasetFilesError` line that names the dataset, the
path and what to do (usually the `harness prepare` command).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from torchvision.datasets.utils import calculate_md5, download_and_extract_archive
from torchvision.transforms.v2 import functional as TF

from harness.data.base import default_data_root
from harness.errors import DatasetFilesError


def prepare_command(dataset: str, root: Path, *flags: str) -> str:
    """The `harness prepare` command for `dataset`, with `--root` when it is not the default."""
    cmd = f"harness prepare --dataset {dataset}"
    if Path(root).resolve() != default_data_root().resolve():
        cmd += f" --root {root}"
    return f"`{' '.join([cmd, *flags])}`"


def missing_files(dataset: str, path: Path, root: Path, how: str = "") -> DatasetFilesError:
    """Error for absent files: names the expected path and the command that fetches them."""
    how = how or f"run {prepare_command(dataset, root)}"
    return DatasetFilesError(f"dataset '{dataset}': files not found at {path}; {how}")


def corrupt_file(dataset: str, path: Path, root: Path, why: str,
                 fix: str = "") -> DatasetFilesError:
    """Error for a corrupt or truncated file: says to replace it and run `harness prepare` again."""
    fix = fix or f"delete it and run {prepare_command(dataset, root)}"
    return DatasetFilesError(f"dataset '{dataset}': {path} is corrupt or truncated ({why}); {fix}")


def verify_md5(dataset: str, root: Path, files: Iterable[tuple[Path, str]]) -> None:
    """Check each file against its published md5; a mismatch names the file and the escape hatch."""
    for path, md5 in files:
        got = calculate_md5(path)
        if got != md5:
            raise DatasetFilesError(
                f"dataset '{dataset}': {path} fails its checksum (md5 {got}, official {md5}); "
                f"it is corrupt or not the official release: delete it and run "
                f"{prepare_command(dataset, root)}, or add --no-verify to use it as it is")


def download_archive(dataset: str, root: Path, url: str, filename: str, md5: str) -> None:
    """Download and extract an official archive into `root` (torchvision's downloader)."""
    try:
        # build choice: the archive is deleted after a checked extraction (saves up to 2.6 GB)
        download_and_extract_archive(url, str(root), filename=filename, md5=md5,
                                     remove_finished=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise DatasetFilesError(
            f"dataset '{dataset}': download of {url} failed ({exc}); download it by hand, extract "
            f"it into {root} and run {prepare_command(dataset, root, '--no-download')}") from None


def expect_per_class(dataset: str, root: Path, labels: np.ndarray, num_classes: int,
                     per_class: int, source: Path) -> None:
    """Refuse a pool or split whose classes do not hold exactly `per_class` samples each."""
    bad_label = len(labels) and (labels.min() < 0 or labels.max() >= num_classes)
    counts = np.bincount(labels[(labels >= 0) & (labels < num_classes)], minlength=num_classes)
    if bad_label or (counts != per_class).any():
        raise corrupt_file(dataset, source, root,
                           f"expected {per_class} images in each of {num_classes} classes, found "
                           f"{len(labels)} images with {int(counts.min())} to {int(counts.max())} "
                           f"per class")


def load_rgb(path: Path, size: int) -> np.ndarray:
    """One image file as uint8 (size, size, 3): RGB, shorter side resized to `size`, centre crop.

    Build choice: resize the shorter side straight to `size` (no 256 -> 224 margin), so the stored
    image keeps the whole central square; methods apply their own crops and augmentation.
    """
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    if rgb.size != (size, size):
        rgb = TF.center_crop(TF.resize(rgb, [size], antialias=True), [size, size])
    return np.asarray(rgb, dtype=np.uint8)


def load_image_files(dataset: str, root: Path, paths: Sequence[Path], size: int,
                     fix: str = "") -> np.ndarray:
    """Decode image files in parallel threads into one preallocated uint8 (n, size, size, 3)."""
    out = np.empty((len(paths), size, size, 3), np.uint8)

    def load_one(k: int) -> None:
        try:
            out[k] = load_rgb(paths[k], size)
        except FileNotFoundError:
            raise missing_files(dataset, paths[k], root, fix) from None
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's decode and truncation errors
            raise corrupt_file(dataset, paths[k], root, str(exc), fix) from None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(load_one, range(len(paths))))
    return out
