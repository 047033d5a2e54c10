"""The LT count rule and manifests (datasets.md sections 1, 2, 4, 7)."""

from __future__ import annotations

import numpy as np
import pytest

from harness import lt
from harness.errors import HarnessError
from harness.registry import dataset_class


def test_worked_example_cifar10_ir10() -> None:
    counts = lt.lt_counts(10, 5000, 10)
    assert counts[0] == 5000 and counts[1] == 3871 and counts[7] == 834 and counts[9] == 500
    assert sum(counts) == 20431


def test_last_class_computed_on_its_own() -> None:
    assert lt.lt_counts(10, 5000, 5)[-1] == 1000  # 5000 * mu**9 would give 999


@pytest.mark.parametrize("c,n_max", [(10, 5000), (20, 2500), (10, 1300), (200, 500), (10, 174)])
@pytest.mark.parametrize("ir", [1, 5, 10, 100, 2.5])
def test_profile_properties(c: int, n_max: int, ir: float) -> None:
    counts = lt.lt_counts(c, n_max, ir)
    assert len(counts) == c and counts[0] == n_max and counts[-1] == int(n_max / ir)
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    if ir == 1:
        assert sum(counts) == c * n_max


@pytest.mark.parametrize("bad", [0.5, 0, -3, "ten", float("nan")])
def test_invalid_ir_is_rejected(bad: object) -> None:
    with pytest.raises(HarnessError, match="imbalance ratio"):
        lt.parse_ir(bad)


def test_first_n_selection_in_pool_order() -> None:
    labels = np.array([1, 0, 1, 0, 0, 1, 2, 2, 0, 2])
    idx = lt.select_first_n(labels, [3, 2, 1])
    assert idx.tolist() == [1, 3, 4, 0, 2, 6]


def test_manifest_roundtrip_and_tamper(tmp_path) -> None:
    labels = np.repeat(np.arange(10), 50)
    man = lt.build_manifest("toy", "train", labels, 10, 50, 10)
    path = lt.manifest_path(tmp_path, "toy", 10)
    lt.write_manifest(man, path)
    first = path.read_bytes()
    lt.write_manifest(lt.build_manifest("toy", "train", labels, 10, 50, 10), path)
    assert path.read_bytes() == first  # byte-identical
    assert lt.read_manifest(path)["counts"] == man["counts"]
    tampered = path.read_text().replace('"indices":[0,', '"indices":[1,')
    path.write_text(tampered)
    with pytest.raises(HarnessError, match="sha256"):
        lt.read_manifest(path)
    other = lt.build_manifest("toy", "train", labels, 10, 50, 5)
    assert other["sha256"] != man["sha256"]


def test_digits_lt_subset_follows_the_rule() -> None:
    digits = dataset_class("digits")()
    man = digits.manifest(10)
    assert man["counts"] == lt.lt_counts(10, 174, 10)
    labels = np.asarray(man["labels"])
    assert np.bincount(labels).tolist() == man["counts"]
    full = digits.manifest(1)
    assert sum(full["counts"]) == 1740
    images = digits.load_images(np.asarray(man["indices"][:5]))
    assert images.dtype == np.uint8 and images.shape == (5, 32, 32, 3)
