"""`harness plan` estimates the cells to run from past runs of the same cells (design D6)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import CellConfig, write_config
from harness.estimate import estimate_lines, format_duration, past_costs, training_progress
from harness.runner import plan_cells
from harness.store import atomic_write_json, read_run_file


def _seconds(run_dir: Path) -> float:
    metrics = read_run_file(run_dir / "metrics.json")
    return metrics["train"]["seconds"] + metrics["eval_seconds"]


def test_plan_estimates_missing_seeds_from_a_finished_seed(runs_dir: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    args = ["--grid", "smoke", "--runs-dir", str(runs_dir), "--device", "cpu"]
    assert main(["run", *args, "--seeds", "0", "--executor", "debug"]) == 0
    done = {p.parts[-4]: p.parent for p in (runs_dir / "smoke").glob("*/*/seed0-*/metrics.json")}
    assert set(done) == {"simclr", "kmeans"}
    capsys.readouterr()
    assert main(["plan", *args, "--executor", "local"]) == 0
    out = capsys.readouterr().out
    # k-means is deterministic: its one cell (seed 0) is done; only SimCLR's seed 1 is left
    assert "3 cells (2 done, 0 running, 0 pending, 0 failed, 1 missing)" in out
    assert "simclr synthetic ir10: 1 cell(s) x " in out and "kmeans synthetic" not in out
    assert "(median of 1 run(s) on cpu)" in out
    total = format_duration(_seconds(done["simclr"]))
    assert f"total: {total} for 1 of 1 cell(s) (on cpu)" in out


def _past_run(runs_dir: Path, grid: str, cfg: CellConfig, seconds: float, device: str) -> Path:
    """A completed run folder as the worker leaves it, as far as the estimate reads it."""
    run_dir = runs_dir / grid / cfg.relative_dir()
    run_dir.mkdir(parents=True)
    write_config(cfg.with_location(grid=grid, run_dir=str(run_dir)), run_dir / "config.yaml")
    atomic_write_json(run_dir / "metrics.json", {"train": {"seconds": seconds - 10.0},
                                                 "eval_seconds": 10.0, "env": {"device": device},
                                                 "primary": "p", "variants": {"p": {"metrics": {}}}})
    return run_dir


def test_only_the_same_cell_with_another_seed_counts(runs_dir: Path) -> None:
    (cell,) = [c.cfg for c in plan_cells("smoke", runs_dir=runs_dir, only="method=simclr",
                                         seeds="1")]
    gpu = "NVIDIA H100 80GB HBM3"
    first = _past_run(runs_dir, "old", replace(cell, seed=0), 600.0, gpu)
    _past_run(runs_dir, "old", replace(cell, seed=2), 900.0, gpu)
    _past_run(runs_dir, "old", replace(cell, seed=3), 1200.0, gpu)
    longer = dict(cell.params, epochs=cell.params["epochs"] + 5)
    _past_run(runs_dir, "old", replace(cell, seed=4, params=longer), 5000.0, gpu)
    (runs_dir / "reused" / first.relative_to(runs_dir / "old")).parent.mkdir(parents=True)
    os.symlink(first, runs_dir / "reused" / first.relative_to(runs_dir / "old"))
    costs = past_costs(cell, runs_dir)
    assert sorted(c.seconds for c in costs) == [600.0, 900.0, 1200.0]  # link counted once
    lines = estimate_lines([cell, replace(cell, seed=5)], runs_dir)
    assert lines[1] == f"  simclr synthetic ir10: 2 cell(s) x 15.0 min (median of 3 run(s) on {gpu}) = 30.0 min"
    assert lines[2] == f"  total: 30.0 min for 2 of 2 cell(s) (on {gpu})"


def test_cells_without_past_runs_are_named(tmp_path: Path) -> None:
    cells = [c.cfg for c in plan_cells("smoke", runs_dir=tmp_path)]
    lines = estimate_lines(cells, tmp_path)
    assert lines[1:3] == ["  simclr synthetic ir10: 2 cell(s), no past run",
                          "  kmeans synthetic ir10: 1 cell(s), no past run"]  # deterministic
    assert "0 of 3 cell(s); 3 without a past run: run one seed first" in lines[-1]
    assert estimate_lines([], tmp_path) == []


def test_progress_of_a_running_cell_uses_the_current_attempt(tmp_path: Path) -> None:
    (cell,) = [c.cfg for c in plan_cells("smoke", runs_dir=tmp_path, only="method=simclr",
                                         seeds="0")]
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    write_config(replace(cell, params=dict(cell.params, epochs=100)), run_dir / "config.yaml")
    assert training_progress(run_dir) is None  # no log yet
    records = [{"epoch": 1, "time": 9.0}, {"epoch": 2, "time": 19.0},  # first attempt, killed
               {"epoch": 3, "time": 4.0}, {"epoch": 4, "time": 6.0}, {"epoch": 5, "time": 8.5}]
    log = "".join(json.dumps({**r, "epoch_end": True}) + "\n" for r in records)
    (run_dir / "train_log.jsonl").write_text(log + '{"epoch": 6, "ti')  # cut mid-write
    progress = training_progress(run_dir)
    assert (progress.epoch, progress.epochs, progress.seconds_per_epoch) == (5, 100, 2.25)
    assert progress.line() == "epoch 5/100, 2.2 s/epoch, about 3.6 min of training left"


def test_status_lists_running_cells_with_their_progress(runs_dir: Path) -> None:
    from harness.cell_lock import acquire
    from harness.report import status_table
    from harness.runner import expected_cells, stage
    from harness.store import update_status

    (planned,) = [c for c in plan_cells("smoke", runs_dir=runs_dir, only="method=simclr", seeds="0")]
    stage(planned, "cached")
    run_dir = Path(planned.cfg.run_dir)
    lock = acquire(run_dir, "worker")  # a live owner: running, not stale
    update_status(run_dir, state="running", pid=os.getpid())
    (run_dir / "train_log.jsonl").write_text(json.dumps({"epoch": 1, "time": 3.0, "epoch_end": True}))
    text = status_table("smoke", expected_cells("smoke", "method=simclr", "0"), runs_dir)
    epochs = planned.cfg.params["epochs"]
    assert f"Running (1):\n- SimCLR Synthetic IR10 seed 0: epoch 1/{epochs}, 3.0 s/epoch" in text
    lock.release()
