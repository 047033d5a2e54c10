"""`harness describe-method`: resolved recipes beside the upstream tables of the specs."""

from __future__ import annotations

import pytest

from harness.cli import main
from harness.recipe import describe_rows, resolved_recipe
from harness.registry import list_methods, method_class

UPSTREAM = [(m, d) for m in list_methods() for d in method_class(m).upstream]


def test_the_specs_upstream_tables_are_there() -> None:
    assert {m for m, _ in UPSTREAM} == {"byol", "propos", "hadis", "simclr", "sdclr", "conmix",
                                        "dcl"}


@pytest.mark.parametrize("method,dataset", UPSTREAM, ids=[f"{m}-{d}" for m, d in UPSTREAM])
def test_upstream_tables_name_a_source_and_only_recipe_settings(method: str, dataset: str) -> None:
    table = method_class(method).upstream[dataset]
    assert table["source"].split()[0].count("/") == 1  # owner/repository, then the file
    extra = set(table) - set(resolved_recipe(method, dataset)) - {"source", "gather"}
    assert not extra, f"upstream settings the recipe does not have: {sorted(extra)}"


def test_every_difference_is_marked() -> None:
    rows, source = describe_rows("dcl", "stl10")  # upstream DCL: 32 px crops, CIFAR statistics
    assert source.startswith("chingyaoc/DCL")
    marked = {row[0] for row in rows if row[3]}
    assert marked == {"bf16 autocast on CUDA", "augmentation: random resized crop",
                      "augmentation: Gaussian blur", "normalisation"}
    assert all(row[1] != row[2] for row in rows if row[3])
    assert all(row[1] == row[2] for row in rows if row[2] and not row[3])


def test_a_method_without_training_and_unknown_names(capsys: pytest.CaptureFixture) -> None:
    assert main(["describe-method", "kmeans", "--dataset", "cifar10"]) == 0
    out = capsys.readouterr().out
    assert "| training" in out and "no upstream recipe" in out
    assert main(["describe-method", "propo", "--dataset", "cifar10"]) == 2
    assert "Did you mean: propos" in capsys.readouterr().err
