"""`harness.load_results` end to end: real runs of a small grid, the CLI's report (also with
`--features backbone`, which a raw-pixel k-means row once crashed), progress lines while
training, and the DataFrame giving back the table's numbers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import harness
from harness.cli import main
from harness.report.results import RESULT_COLUMNS

GRID = """\
name: tiny
budget: test
fixed: {eval_seeds: first2, protocol: {n_init: 2, max_iter: 50}}
grid: {method: [simclr, kmeans], dataset: [synthetic], ir: [10], seed: [0, 1]}
"""


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tiny")
    grid = root / "tiny.yaml"
    grid.write_text(GRID)
    runs = root / "runs"
    assert main(["run", "--grid", str(grid), "--executor", "debug", "--runs-dir", str(runs)]) == 0
    return grid, runs


def test_load_results_returns_the_tables_numbers(tiny_runs: tuple[Path, Path],
                                                 tmp_path: Path) -> None:
    grid, runs = tiny_runs
    assert main(["report", "--grid", str(grid), "--runs-dir", str(runs), "--out",
                 str(tmp_path), "--no-figures"]) == 0
    df = harness.load_results(str(grid), runs)
    assert list(df.columns) == RESULT_COLUMNS
    # simclr: 2 seeds x (projector, backbone); kmeans: one deterministic run x pixels
    assert sorted(df.groupby("method")["run_dir"].nunique().items()) == [("kmeans", 1),
                                                                         ("simclr", 2)]
    assert set(df.loc[df["method"] == "kmeans", "deterministic"]) == {True}
    table = pd.read_csv(tmp_path / "tiny_table.csv", dtype={"ir": str})
    means = df[df["primary"]].groupby(["method", "dataset", "ir", "metric"])["value"].mean()
    for c in table.itertuples():
        assert means[(c.method, c.dataset, c.ir, c.metric)] == pytest.approx(c.mean)
    acc = df[(df["metric"] == "acc") & df["primary"]]
    assert acc["value"].between(0, 100).all() and set(acc["unit"]) == {"%"}
    written = pd.read_csv(tmp_path / "tiny.csv", dtype={"ir": str})
    assert len(written) == len(df)


def test_report_with_features_backbone_on_real_runs(tiny_runs: tuple[Path, Path],
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    grid, runs = tiny_runs
    assert main(["report", "--grid", str(grid), "--runs-dir", str(runs), "--out",
                 str(tmp_path), "--features", "backbone", "--format", "md"]) == 0
    out = capsys.readouterr().out
    kmeans = next(line for line in out.splitlines() if line.startswith("| K-means"))
    assert "(det.)" in kmeans and "n/a" not in kmeans
    assert "Variant: 'backbone' → backbone/kmeans/lt_train, pixels/kmeans/lt_train." in out


def test_training_prints_progress_lines(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    grid = tmp_path / "one.yaml"
    grid.write_text(GRID.replace("seed: [0, 1]", "seed: [0]").replace("simclr, kmeans",
                                                                      "simclr"))
    assert main(["run", "--grid", str(grid), "--executor", "debug", "--runs-dir",
                 str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("executor: debug (--executor debug)")
    (line,) = [x for x in out.splitlines() if x.startswith("[simclr synthetic ir=10 seed=0]")]
    assert "epoch 2/2" in line and "img/s" in line and "left" in line


def test_the_readme_example_runs(tiny_runs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture) -> None:
    import re

    from conftest import REPO

    grid, runs = tiny_runs
    (code,) = re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(runs))
    exec(code.replace('"demo"', repr(str(grid))), {})
    out = capsys.readouterr().out
    assert "simclr" in out and "kmeans" in out and "mean" in out
