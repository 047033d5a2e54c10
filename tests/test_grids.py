"""Grid specs: shipped grids load and expand; malformed files name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.grids import GRID_DIR, list_grids, load_grid, parse_seeds, select
from harness.runner import plan_cells


@pytest.mark.parametrize("name", sorted(list_grids()))
def test_every_shipped_grid_loads_and_expands(name: str, tmp_path: Path) -> None:
    grid = load_grid(name)
    cells = grid.cells()
    assert cells, f"grid {name} expands to no cell"
    keys = {(c["method"], c["dataset"], str(c["ir"]), c["seed"]) for c in cells}
    assert len(keys) == len(cells)  # de-duplicated


@pytest.mark.parametrize("name", ["paper_table2", "paper_lt_extra"])
def test_paper_grids_state_amp_for_every_trained_method(name: str) -> None:
    from harness.method import TrainableMethod
    from harness.registry import method_class

    grid = load_grid(name)
    trained = {m for m in grid.spec["grid"]["method"] if issubclass(method_class(m),
                                                                    TrainableMethod)}
    assert trained and all(c["settings"]["params"]["amp"] == "auto" for c in grid.cells()
                           if c["method"] in trained)


def test_demo_grid_shape(tmp_path: Path) -> None:
    planned = plan_cells("demo", runs_dir=tmp_path)
    deep = [p.cfg for p in planned if p.cfg.method in ("simclr", "conmix")]
    assert len(deep) == 2 * 2 * 3 and len({c.uid for c in deep}) == 12
    assert all(c.params["width"] == 16 and c.data == {"image_size": 16} for c in deep)
    assert all(Path(c.run_dir).parent.name == f"mnist5k_ir{c.ir}" for c in deep)
    pixels = [p.cfg for p in planned if p.cfg.method == "kmeans"]
    assert sorted((c.ir, c.seed) for c in pixels) == [(1, 0), (10, 0)]  # one run serves 3 seeds


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return path


GOOD = """
name: t
grid: {method: [simclr, kmeans], dataset: [synthetic, digits], ir: [1, 10], seed: [0, 1]}
fixed: {params.epochs: 3}
methods: {kmeans: {}}
subgrids: {extra: {dataset: [synthetic], ir: [5], params: {epochs: 7}}}
exclude: [{method: kmeans, dataset: digits}]
include: [{method: kmeans, dataset: digits, ir: 100, seed: 0}]
"""


def test_subgrids_include_exclude_and_overrides(tmp_path: Path) -> None:
    grid = load_grid(str(write(tmp_path, GOOD)))
    cells = grid.cells()
    keys = {(c["method"], c["dataset"], c["ir"], c["seed"]) for c in cells}
    assert ("kmeans", "digits", 1, 0) not in keys  # excluded
    assert ("kmeans", "digits", 100, 0) not in keys  # include is filtered by exclude too
    assert ("simclr", "synthetic", 5, 1) in keys
    by_key = {(c["method"], c["dataset"], c["ir"], c["seed"]): c for c in cells}
    assert by_key[("simclr", "synthetic", 5, 0)]["settings"]["params"]["epochs"] == 7
    assert by_key[("simclr", "synthetic", 1, 0)]["settings"]["params"]["epochs"] == 3
    picked = select(cells, only="method=simclr,ir=10", seeds="1")
    assert {(c["dataset"], c["seed"]) for c in picked} == {("synthetic", 1), ("digits", 1)}


@pytest.mark.parametrize("text,needle", [
    ("grid: [1, 2]", "'grid'"),
    ("grid: {method: [simclr], dataset: [digits], ir: [1]}", "'grid'"),
    ("grid: {method: simclr, dataset: [digits], ir: [1], seed: [0]}", "'grid.method'"),
    ("grdi: {}\ngrid: {method: [simclr], dataset: [digits], ir: [1], seed: [0]}", "'grdi'"),
    ("grid: {method: [simclr], dataset: [digits], ir: [0.5], seed: [0]}", "imbalance ratio"),
    ("grid: {method: [simclr], dataset: [digits], ir: [1], seed: [0]}\nfixed: {parms.x: 1}",
     "'parms.x'"),
    ("grid: {method: [simclr], dataset: [digits], ir: [1], seed: [0]\n", "not valid YAML"),
])
def test_malformed_grid_names_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(HarnessError) as info:
        load_grid(str(path)).cells()
    assert str(path) in str(info.value) and needle in str(info.value)


def test_unknown_grid_suggests_nearest() -> None:
    with pytest.raises(HarnessError, match="Did you mean: demo"):
        load_grid("dmeo")
    assert (GRID_DIR / "demo.yaml").exists()


def test_seed_selection() -> None:
    assert parse_seeds("0-2,5") == [0, 1, 2, 5] and parse_seeds(None) is None
    for bad in ("9-1", "a", "-1", "0-"):
        with pytest.raises(HarnessError, match="use a range like 0-4"):
            parse_seeds(bad)


def test_only_that_matches_nothing_names_the_grid_values(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match=r"matches no cell of the grid; its values are ir: 10$"):
        plan_cells("smoke", runs_dir=tmp_path, only="ir=7")
    picked = plan_cells("smoke", runs_dir=tmp_path, only="method=simclr", seeds="9")
    assert [(c.cfg.method, c.cfg.seed) for c in picked] == [("simclr", 9)]  # seeds beyond the grid


def test_mnist_lt_grid_runs_every_registered_method_on_the_cpu_budget(tmp_path: Path) -> None:
    from harness.registry import list_methods, method_class

    planned = plan_cells("mnist_lt", runs_dir=tmp_path)
    assert {p.cfg.method for p in planned} == set(list_methods())
    assert {(p.cfg.dataset, p.cfg.ir) for p in planned} == {("mnist5k", 10), ("mnist5k", 100),
                                                            ("digits", 10)}
    for p in planned:
        cls = method_class(p.cfg.method)
        expected = cls.resolve_params(p.cfg.dataset, budget="cpu")
        assert p.cfg.params == expected and p.cfg.data == {"image_size": 16}
    trainable = [p for p in planned if p.cfg.method != "kmeans"]
    assert len(trainable) == 8 * 3 * 3 and len(planned) == len(trainable) + 3
