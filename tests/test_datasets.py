"""Dataset plugins on fake files in the official formats; `prepare_dataset` and `describe`."""

from __future__ import annotations

import json
import pickle
import tracemalloc
from decimal import Decimal, getcontext
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
import torchvision.datasets.stl10 as tv_stl10
from fakedata import (write_fake_cifar10, write_fake_cifar100, write_fake_imagenet_lt,
                      write_fake_stl10, write_fake_tiny_imagenet)
from PIL import Image
from torchvision.datasets import CIFAR10, STL10, ImageFolder

import harness.data.files as files
from harness.data.base import load_lt
from harness.errors import DatasetFilesError, HarnessError
from harness.prepare import describe, prepare_dataset
from harness.registry import dataset_class

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Default data root inside the test folder (never the user's cache)."""
    root = tmp_path / "default-root"
    monkeypatch.setenv("HARNESS_DATA_ROOT", str(root))
    return root


@pytest.fixture
def shrink(monkeypatch: pytest.MonkeyPatch):
    """Set class attributes of a registered plugin for one test (fake pools are tiny)."""
    def apply(name: str, **attrs: object) -> type:
        cls = dataset_class(name)
        for key, value in attrs.items():
            monkeypatch.setattr(cls, key, value)
        return cls
    return apply


@pytest.fixture
def trust_torchvision_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let torchvision's readers open fake files: only its md5 check is replaced."""
    def exists(path: object, md5: object = None) -> bool:
        return Path(str(path)).is_file()
    monkeypatch.setattr(tv_cifar, "check_integrity", exists)
    monkeypatch.setattr(tv_stl10, "check_integrity", exists)


def parse(text: str) -> tuple[list[tuple[int, str, int]], int]:
    *rows, total = text.splitlines()
    parsed = [(int(r), name, int(n)) for r, name, n in (row.split() for row in rows)]
    assert total.startswith("total ")
    return parsed, int(total.split()[1])


def exact_counts(num_classes: int, n_max: int, ir: int) -> list[int]:
    """The spec's rule in 40-digit decimal arithmetic, last class on its own."""
    getcontext().prec = 40
    head = [int(Decimal(n_max) * Decimal(ir) ** (Decimal(-i) / (num_classes - 1)))
            for i in range(num_classes - 1)]
    return head + [n_max // ir]


# -- describe (no files) ---------------------------------------------------------------------

def test_describe_cifar10_worked_example() -> None:
    rows, total = parse(describe("cifar10", 10))
    assert [name for _, name, _ in rows] == list(CIFAR10_NAMES)
    counts = [n for _, _, n in rows]
    assert counts[:2] == [5000, 3871] and counts[7] == 834 and counts[9] == 500
    assert total == sum(counts) == 20431
    assert describe("cifar10", 5).splitlines()[-2] == "9 truck 1000"


@pytest.mark.parametrize("ir", [5, 10, 100])
@pytest.mark.parametrize("name,num_classes,n_max", [
    ("cifar10", 10, 5000), ("cifar20", 20, 2500), ("stl10", 10, 1300),
    ("tinyimagenet", 200, 500)])
def test_describe_counts_follow_the_rule(name: str, num_classes: int, n_max: int, ir: int,
                                         tmp_path: Path) -> None:
    rows, total = parse(describe(name, ir, root=tmp_path / "empty"))
    counts = [n for _, _, n in rows]
    assert counts == exact_counts(num_classes, n_max, ir)
    assert [r for r, _, _ in rows] == list(range(num_classes))
    assert counts[0] == n_max and counts[-1] == n_max // ir and total == sum(counts)
    assert all(a >= b for a, b in zip(counts, counts[1:]))


def test_describe_names() -> None:
    assert parse(describe("cifar20", 10))[0][0][1] == "aquatic_mammals"
    assert parse(describe("stl10", 10))[0][-1][1] == "truck"
    assert parse(describe("tinyimagenet", 10))[0][199][1] == "class199"


def test_describe_rejects_bad_ir() -> None:
    for name, ir in (("cifar10", "native"), ("cifar10", 0.5), ("imagenet_lt", 10)):
        with pytest.raises(HarnessError):
            describe(name, ir)


def test_describe_imagenet_lt_needs_the_split_list(data_root: Path) -> None:
    with pytest.raises(DatasetFilesError) as err:
        describe("imagenet_lt", "native")
    msg = str(err.value)
    assert "\n" not in msg and "harness prepare --dataset imagenet_lt" in msg
    assert str(data_root / "imagenet_lt" / "ImageNet_LT_train.txt") in msg
    assert "cannot be downloaded automatically" in msg


# -- CIFAR-10 --------------------------------------------------------------------------------

def test_cifar10_prepare_writes_manifests_once_and_loads(tmp_path: Path, shrink) -> None:
    cls = shrink("cifar10", n_max=4, pool_per_class=4, test_per_class=2)
    fake = write_fake_cifar10(tmp_path, per_class=4)
    paths = prepare_dataset("cifar10", tmp_path, [1, 2], verify=False)
    assert paths == [tmp_path / "subsets" / f"cifar10_ir{r}_exp_first_n.json" for r in (1, 2)]
    before = [(p.read_bytes(), p.stat().st_mtime_ns) for p in paths]
    assert prepare_dataset("cifar10", tmp_path, ["2", 1], verify=False) == paths[::-1]
    assert [(p.read_bytes(), p.stat().st_mtime_ns) for p in paths] == before

    other = tmp_path / "again"
    write_fake_cifar10(other, per_class=4)
    prepare_dataset("cifar10", other, [2], verify=False)
    assert (other / "subsets" / paths[1].name).read_bytes() == before[1][0]

    data = load_lt(cls(tmp_path), 2)
    idx = np.asarray(data.manifest["indices"])
    assert data.manifest["counts"] == [4, 3, 3, 3, 2, 2, 2, 2, 2, 2]
    for c in range(10):  # first-n of each class in pool order
        first = np.flatnonzero(fake.train_labels == c)[:data.manifest["counts"][c]]
        assert set(first) <= set(idx)
    assert np.array_equal(data.labels.numpy(), fake.train_labels[idx])
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), fake.train_images[idx])
    assert data.class_names == CIFAR10_NAMES

    test = load_lt(cls(tmp_path), 2, split="test")
    assert np.array_equal(test.images.permute(0, 2, 3, 1).numpy(), fake.test_images)


def test_cifar10_reader_matches_torchvision(tmp_path: Path, shrink,
                                            trust_torchvision_files: None) -> None:
    shrink("cifar10", n_max=3, pool_per_class=3, test_per_class=2)
    write_fake_cifar10(tmp_path, per_class=3)
    plugin = dataset_class("cifar10")(tmp_path)
    for train in (True, False):
        tv = CIFAR10(str(tmp_path), train=train, download=False)
        if train:
            labels = plugin.pool_labels()
            images = plugin.load_images(np.arange(len(labels)))
        else:
            images, labels = plugin.test_split()
        assert np.array_equal(images, tv.data) and labels.tolist() == tv.targets


def test_cifar10_checksums_are_verified(tmp_path: Path, shrink) -> None:
    shrink("cifar10", n_max=3, pool_per_class=3, test_per_class=2)
    write_fake_cifar10(tmp_path, per_class=3)
    with pytest.raises(DatasetFilesError, match="data_batch_1 fails its checksum.*--no-verify"):
        prepare_dataset("cifar10", tmp_path, [2])  # IR <= n_max of the shrunken pool


def test_missing_files_give_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DatasetFilesError) as err:
        prepare_dataset("cifar10", tmp_path, [10], download=False)
    msg = str(err.value)
    assert "\n" not in msg and "'cifar10'" in msg
    assert str(tmp_path / "cifar-10-batches-py" / "data_batch_1") in msg
    assert f"harness prepare --dataset cifar10 --root {tmp_path}" in msg
    with pytest.raises(DatasetFilesError, match="harness prepare --dataset stl10"):
        load_lt(dataset_class("stl10")(tmp_path), 10)

    def offline(*args: object, **kwargs: object) -> None:
        raise URLError("no network")
    monkeypatch.setattr(files, "download_and_extract_archive", offline)
    with pytest.raises(DatasetFilesError, match=r"download of https://\S+cifar-10-python.tar.gz") as err:
        prepare_dataset("cifar10", tmp_path, [10])
    assert str(err.value).endswith(f"`harness prepare --dataset cifar10 --root {tmp_path} --no-download`")


def test_cifar10_corrupt_or_truncated_files_are_errors(tmp_path: Path, shrink) -> None:
    cls = shrink("cifar10", n_max=4, pool_per_class=4, test_per_class=2)
    write_fake_cifar10(tmp_path, per_class=4)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    intact = batch.read_bytes()
    batch.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(DatasetFilesError, match="data_batch_3 is corrupt or truncated.*delete it"):
        cls(tmp_path).pool_labels()

    entry = pickle.loads(intact, encoding="latin1")  # a valid pickle with one image less
    entry["data"], entry["labels"] = entry["data"][:-1], entry["labels"][:-1]
    batch.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(DatasetFilesError, match="expected 4 images in each of 10 classes"):
        prepare_dataset("cifar10", tmp_path, [2], verify=False)


def test_changed_count_rule_refuses_the_cached_manifest(tmp_path: Path, shrink) -> None:
    shrink("cifar10", n_max=4, pool_per_class=4, test_per_class=2)
    write_fake_cifar10(tmp_path, per_class=4)
    prepare_dataset("cifar10", tmp_path, [2], verify=False)
    shrink("cifar10", n_max=3)
    with pytest.raises(HarnessError, match="differs from the subset"):
        prepare_dataset("cifar10", tmp_path, [2], verify=False)


def test_loading_keeps_one_uint8_copy(tmp_path: Path, shrink) -> None:
    cls = shrink("cifar10", n_max=100, pool_per_class=100, test_per_class=1)
    write_fake_cifar10(tmp_path, per_class=100, test_per_class=1)
    plugin = cls(tmp_path)
    labels = plugin.pool_labels()
    tracemalloc.start()
    images = plugin.load_images(np.arange(len(labels)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert images.dtype == np.uint8 and images.shape == (1000, 32, 32, 3)
    assert images.nbytes == 1000 * 32 * 32 * 3
    # The output plus the decoding buffers of one batch file (~0.7x here): a float32 copy (4x)
    # or the whole pool held beside the output (2x + buffers) would not fit.
    assert peak < 2.2 * images.nbytes
    data = load_lt(plugin, 1)
    assert data.images.dtype == torch.uint8
    assert data.images.element_size() * data.images.nelement() == images.nbytes


# -- CIFAR-20 --------------------------------------------------------------------------------

def test_cifar20_superclasses_from_the_official_coarse_labels(tmp_path: Path, shrink) -> None:
    cls = shrink("cifar20", n_max=5, pool_per_class=5, test_per_class=5)
    fake = write_fake_cifar100(tmp_path, per_fine=1, test_per_fine=1)
    plugin = cls(tmp_path)
    table = plugin.fine_to_coarse()
    assert np.flatnonzero(table == 0).tolist() == [4, 30, 55, 72, 95]
    assert np.flatnonzero(table == 1).tolist() == [1, 32, 67, 73, 91]
    assert np.flatnonzero(table == 2).tolist() == [54, 62, 70, 82, 92]
    assert (np.bincount(table, minlength=20) == 5).all()
    assert np.array_equal(table[fake.train_fine], fake.train_labels)

    prepare_dataset("cifar20", tmp_path, [5], verify=False)
    data = load_lt(cls(tmp_path), 5)
    idx = np.asarray(data.manifest["indices"])
    assert data.manifest["counts"][0] == 5 and data.manifest["counts"][-1] == 1
    assert np.array_equal(data.labels.numpy(), fake.train_labels[idx])
    assert np.array_equal(data.images.permute(0, 2, 3, 1).numpy(), fake.train_images[idx])
    assert np.bincount(plugin.test_split()[1]).tolist() == [5] * 20

    train = tmp_path / "cifar-100-python" / "train"
    entry = pickle.loads(train.read_bytes(), encoding="latin1")
    entry["coarse_labels"][0] = (entry["coarse_labels"][0] + 1) % 20  # one fine label, two supers
    train.write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(DatasetFilesError, match="do not map onto 20 superclasses"):
        cls(tmp_path).pool_labels()


# -- STL-10 ----------------------------------------------------------------------------------

def test_stl10_pool_is_train_then_test(tmp_path: Path, shrink,
                                       trust_torchvision_files: None) -> None:
    cls = shrink("stl10", n_max=5, split_per_class={"train": 2, "test": 3})
    fake = write_fake_stl10(tmp_path, train_per_class=2, test_per_class=3)
    prepare_dataset("stl10", tmp_path, [5], verify=False)
    plugin = cls(tmp_path)
    labels = plugin.pool_labels()
    images = plugin.load_images(np.arange(len(labels)))
    assert np.array_equal(labels, np.concatenate([fake.train_labels, fake.test_labels]))
    assert np.array_equal(images, np.concatenate([fake.train_images, fake.test_images]))
    for split in ("train", "test"):  # same pixels as torchvision's reader of the same files
        tv = STL10(str(tmp_path), split=split, download=False)
        ours = images[:20] if split == "train" else images[20:]
        assert np.array_equal(ours, tv.data.transpose(0, 2, 3, 1))
    assert plugin.test_split() is None
    with pytest.raises(HarnessError, match="no balanced test split"):
        load_lt(plugin, 5, split="test")
    data = load_lt(plugin, 5)
    assert data.images.shape[1:] == (3, 96, 96) and len(data) == sum(data.manifest["counts"])


def test_stl10_truncated_binary(tmp_path: Path, shrink) -> None:
    shrink("stl10", n_max=5, split_per_class={"train": 2, "test": 3})
    write_fake_stl10(tmp_path, train_per_class=2, test_per_class=3)
    test_x = tmp_path / "stl10_binary" / "test_X.bin"
    test_x.write_bytes(test_x.read_bytes()[:-100])
    with pytest.raises(DatasetFilesError, match="test_X.bin is corrupt or truncated"):
        prepare_dataset("stl10", tmp_path, [5], verify=False)


# -- Tiny-ImageNet ---------------------------------------------------------------------------

def test_tiny_imagenet_follows_imagefolder(tmp_path: Path, shrink) -> None:
    cls = shrink("tinyimagenet", n_max=2, pool_per_class=2, test_per_class=1)
    folder = write_fake_tiny_imagenet(tmp_path, per_class=2, val_per_class=1)
    assert prepare_dataset("tinyimagenet", tmp_path, [2], verify=False) == [
        tmp_path / "subsets" / "tinyimagenet_ir2_exp_first_n.json"]
    plugin = cls(tmp_path)
    reference = ImageFolder(str(folder / "train"))
    assert plugin.pool_labels().tolist() == reference.targets
    assert list(plugin.class_names) == reference.classes == sorted(reference.classes)
    assert parse(describe("tinyimagenet", 2, root=tmp_path))[0][0][1] == reference.classes[0]

    picks = np.array([0, 1, 399])
    images = plugin.load_images(picks)
    for k, i in enumerate(picks):
        with Image.open(reference.samples[i][0]) as img:
            assert np.array_equal(images[k], np.asarray(img.convert("RGB")))
    grey = images[0]  # the first image of each class is stored as greyscale
    assert grey.shape == (64, 64, 3) and (grey[..., 0] == grey[..., 2]).all()

    test_images, test_labels = plugin.test_split()
    assert test_images.shape == (200, 64, 64, 3) and sorted(test_labels) == list(range(200))


def test_tiny_imagenet_missing_image_is_an_error(tmp_path: Path, shrink) -> None:
    cls = shrink("tinyimagenet", n_max=2, pool_per_class=2, test_per_class=1)
    folder = write_fake_tiny_imagenet(tmp_path, per_class=2, val_per_class=1)
    next((folder / "train").glob("*/images/*_1.JPEG")).unlink()
    with pytest.raises(DatasetFilesError, match="expected 2 images in each of 200 classes"):
        cls(tmp_path).pool_labels()
    with pytest.raises(DatasetFilesError, match="unzip the official archive"):
        dataset_class("tinyimagenet")(tmp_path / "nothing").pool_labels()


def test_tiny_imagenet_truncated_jpeg_is_an_error(tmp_path: Path, shrink) -> None:
    cls = shrink("tinyimagenet", n_max=2, pool_per_class=2, test_per_class=1)
    write_fake_tiny_imagenet(tmp_path, per_class=2, val_per_class=1)
    plugin = cls(tmp_path)
    victim = Path(plugin._scan()[5][0])
    victim.write_bytes(victim.read_bytes()[:300])
    with pytest.raises(DatasetFilesError, match=f"{victim.name} is corrupt or truncated"):
        plugin.load_images(np.arange(10))


# -- ImageNet-LT -----------------------------------------------------------------------------

IMAGENET_LT_FAKE = dict(num_classes=4, n_max=7, n_min=1, train_size=16, test_per_class=1)


def test_imagenet_lt_native_split(tmp_path: Path, shrink) -> None:
    cls = shrink("imagenet_lt", **IMAGENET_LT_FAKE)
    folder = write_fake_imagenet_lt(tmp_path, counts=[3, 7, 1, 5])
    (path,) = prepare_dataset("imagenet_lt", tmp_path, [])
    assert path.name == "imagenet_lt_irnative_exp_first_n.json"
    plugin = cls(tmp_path)
    data = load_lt(plugin, "native")
    assert data.manifest["counts"] == [3, 7, 1, 5] and data.labels.tolist() == sorted(
        data.labels.tolist())
    assert data.images.shape == (16, 3, 224, 224) and data.images.dtype == torch.uint8

    lines = (folder / "ImageNet_LT_train.txt").read_text().split("\n")
    first = data.manifest["indices"][0]
    expected = files.load_rgb(folder / lines[first].split()[0], 224)
    assert np.array_equal(data.images[0].permute(1, 2, 0).numpy(), expected)
    assert lines[first].split()[1] == "0" and lines[first].split("/")[1] == data.class_names[0]
    assert all(int(line.split()[1]) != 0 for line in lines[:first] if line)

    rows, total = parse(describe("imagenet_lt", "native", root=tmp_path))
    assert [(n, c) for _, c, n in rows][:2] == [(7, plugin.class_names[1]),
                                               (5, plugin.class_names[3])]
    assert total == 16
    assert plugin.class_groups([150, 101, 100, 20, 19]).tolist() == [
        "head", "head", "medium", "medium", "tail"]
    test_images, test_labels = plugin.test_split()
    assert test_images.shape == (4, 224, 224, 3) and sorted(test_labels) == [0, 1, 2, 3]


def test_imagenet_lt_checks(tmp_path: Path, shrink) -> None:
    shrink("imagenet_lt", **IMAGENET_LT_FAKE)
    folder = write_fake_imagenet_lt(tmp_path, counts=[3, 7, 1, 4])
    with pytest.raises(DatasetFilesError, match="not the standard 16 .*--no-verify"):
        prepare_dataset("imagenet_lt", tmp_path, ["native"])
    next((folder / "train").glob("*/*.JPEG")).unlink()
    with pytest.raises(DatasetFilesError, match="1 listed images are missing"):
        prepare_dataset("imagenet_lt", tmp_path, ["native"], verify=False)


def test_simclr_smoke_on_fake_cifar10_through_run_and_report(tmp_path: Path, shrink,
                                                             capsys: pytest.CaptureFixture) -> None:
    """A fake CIFAR-10 folder in the official format -> `harness run` -> `harness report`."""
    from harness.cli import main
    from harness.lt import lt_counts
    from harness.store import read_run_file

    shrink("cifar10", n_max=12, pool_per_class=12, test_per_class=2)
    root = tmp_path / "data"
    write_fake_cifar10(root, per_class=12)
    grid = tmp_path / "fakecifar.yaml"
    grid.write_text("""
name: fakecifar
budget: test
fixed: {eval_seeds: first2, protocol: {n_init: 2, max_iter: 30, extra_splits: [test]}}
grid: {method: [simclr], dataset: [cifar10], ir: [4], seed: [0]}
methods: {simclr: {params: {batch_size: 16}}}
""")
    runs = tmp_path / "runs"
    assert main(["prepare", "--dataset", "cifar10", "--root", str(root), "--ir", "4",
                 "--no-verify", "--no-download"]) == 0
    assert main(["run", "--grid", str(grid), "--executor", "debug", "--runs-dir", str(runs),
                 "--root", str(root)]) == 0
    (run_dir,) = [p.parent for p in runs.glob("fakecifar/simclr/cifar10_ir4/*/metrics.json")]
    metrics = read_run_file(run_dir / "metrics.json")
    manifest = json.loads((root / "subsets" / "cifar10_ir4_exp_first_n.json").read_text())
    assert metrics["manifest_sha256"] == manifest["sha256"]
    assert metrics["class_counts"] == manifest["counts"] == lt_counts(10, 12, 4)
    assert {"projector/kmeans/lt_train", "projector/kmeans/test"} <= set(metrics["variants"])
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["report", "--grid", str(grid), "--runs-dir", str(runs), "--out", str(out),
                 "--format", "md,csv", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    assert "SimCLR" in printed and "CIFAR-10 IR4" in printed.replace("\\u2011", "-")
    assert (out / "fakecifar.md").exists()
