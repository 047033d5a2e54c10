"""Budgets (`paper`, `cpu`, `test`), `params.augment` recipe overrides, deterministic methods."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from harness.config import CellConfig
from harness.data.augment import draw_augment
from harness.data.digit_recipe import DIGIT_DATASETS
from harness.errors import HarnessError
from harness.grids import load_grid, resolve, select
from harness.method import BUDGETS
from harness.registry import list_methods, method_class

TRAINABLE = [m for m in list_methods() if not method_class(m).deterministic]


def write_grid(tmp_path: Path, text: str) -> str:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return str(path)


def test_budgets_apply_their_settings_over_the_dataset_ones() -> None:
    cls = method_class("simclr")
    paper = cls.resolve_params("cifar10")
    assert paper["epochs"] == 1000 and "augment" not in paper  # unset overrides leave no key
    for budget, values in (("cpu", cls.cpu_params), ("test", cls.test_params)):
        resolved = cls.resolve_params("cifar10", budget=budget)
        assert values and {k: resolved[k] for k in values} == values
    with pytest.raises(HarnessError, match="unknown budget 'fast': use one of paper, cpu, test"):
        cls.resolve_params("cifar10", budget="fast")
    assert BUDGETS == ("paper", "cpu", "test")


@pytest.mark.parametrize("method", TRAINABLE)
def test_every_trainable_method_has_a_cpu_budget(method: str) -> None:
    cls = method_class(method)
    cpu = cls.resolve_params("mnist5k", budget="cpu")
    paper = cls.resolve_params("mnist5k")
    assert cls.cpu_params and cpu["epochs"] < paper["epochs"]
    assert cpu["width"] < paper["width"]


def test_grid_budget_is_checked_and_selects_cpu_params(tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path, "budget: cpu\ngrid: {method: [simclr], "
                                          "dataset: [mnist5k], ir: [10], seed: [0]}\n"))
    cfg = resolve(grid.cells()[0], grid.spec["budget"], grid.name, tmp_path, tmp_path, None)
    assert cfg.params["epochs"] == method_class("simclr").cpu_params["epochs"]
    with pytest.raises(HarnessError, match="'budget' must be one of paper, cpu, test"):
        load_grid(write_grid(tmp_path, "budget: laptop\ngrid: {method: [simclr], "
                                       "dataset: [digits], ir: [10], seed: [0]}\n"))


def test_augment_overrides_change_only_the_named_recipe_fields(tmp_path: Path) -> None:
    cls = method_class("simclr")
    params = cls.resolve_params("digits", {"augment": {"flip_p": 0.0, "scale": [0.4, 1.0]}},
                                budget="test")
    cfg = CellConfig(method="simclr", dataset="digits", ir=100, seed=0, params=params,
                     data={"image_size": 8}, device="cpu")
    method = cls()
    method.setup(cfg, tmp_path)
    own, used = method.augment_recipe(), method.training_recipe()
    assert used.flip_p == 0.0 and used.scale == (0.4, 1.0)
    assert used.jitter == own.jitter and used.interpolation == own.interpolation
    assert method.run_card()["augment"] == {"flip_p": 0.0, "scale": [0.4, 1.0]}


@pytest.mark.parametrize("augment, match", [
    ({"flip": 0.0}, "unknown key.*flip.*use any of .*flip_p"),
    ({"size": 8}, "unknown key.*size"),
    ([0.0], r"params.augment = \[0.0\] must be a mapping or null"),
])
def test_bad_augment_overrides_are_refused_at_resolution(augment: object, match: str) -> None:
    with pytest.raises(HarnessError, match=match):
        method_class("simclr").resolve_params("digits", {"augment": augment})


def test_a_deterministic_method_runs_once_for_every_seed(tmp_path: Path) -> None:
    grid = load_grid(write_grid(tmp_path, "grid: {method: [kmeans, simclr], dataset: [digits], "
                                          "ir: [1, 10], seed: [0, 1, 2]}\n"))
    cells = select(grid.cells())
    kmeans = sorted((c["ir"], c["seed"]) for c in cells if c["method"] == "kmeans")
    assert kmeans == [(1, 0), (10, 0)]
    assert len([c for c in cells if c["method"] == "simclr"]) == 6
    assert {c["seed"] for c in select(grid.cells(), seeds="1-2") if c["method"] == "kmeans"} == {0}
    assert method_class("kmeans").deterministic and not method_class("simclr").deterministic


@pytest.mark.parametrize("method", TRAINABLE)
@pytest.mark.parametrize("dataset", DIGIT_DATASETS)
def test_digit_recipe_has_no_flip_and_brightness_contrast_jitter_only(method: str, dataset: str,
                                                                       tmp_path: Path) -> None:
    cls = method_class(method)
    digit = cls.resolve_params(dataset, budget="test")
    assert digit["augment"] == {"flip_p": 0.0, "jitter": [0.4, 0.4, 0.0, 0.0], "grayscale_p": 0.0}
    cfg = CellConfig(method=method, dataset="digits", ir=100, seed=0, params=digit,
                     data={"image_size": 8}, device="cpu")
    trained = cls()
    trained.setup(cfg, tmp_path)
    own, used = trained.augment_recipe(), trained.training_recipe()
    assert (used.flip_p, used.jitter, used.grayscale_p) == (0.0, (0.4, 0.4, 0.0, 0.0), 0.0)
    # everything else -- crop scale and ratio, jitter probability, blur -- is the method's own
    assert dataclasses.replace(used, flip_p=own.flip_p, jitter=own.jitter,
                               grayscale_p=own.grayscale_p) == own
    assert "flip" not in draw_augment(4, used, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", TRAINABLE)
def test_paper_datasets_keep_the_methods_own_recipe(method: str) -> None:
    cls = method_class(method)
    for dataset in ("cifar10", "cifar20", "stl10", "tinyimagenet", "imagenet_lt"):
        assert "augment" not in cls.resolve_params(dataset)
