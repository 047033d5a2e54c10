"""The run store under kills and races: nothing stranded, nothing lost, nothing trained twice.

Kill moments are drawn at random (fixed seed) as points in a run's progress (cells started,
epochs ended, cells completed) plus a random delay; what is asserted holds wherever they land.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.runner import plan_cells, stage
from harness.store import cell_state, read_run_file

GRID = """
name: {name}
budget: test
fixed: {{eval_seeds: first2, protocol: {{n_init: 2, max_iter: 30}}}}
grid: {{method: [simclr, kmeans], dataset: [synthetic], ir: [10], seed: [0, 1]}}
exclude: [{{method: kmeans, seed: 1}}]
methods:
  simclr: {{params: {{epochs: {epochs}, ckpt_every: 1, batch_size: 32}}}}
"""


def grid_file(tmp_path: Path, name: str, epochs: int) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(GRID.format(name=name, epochs=epochs))
    return path


def cells(runs: Path, grid: str) -> dict[str, Path]:
    """`<method>/<seed folder>` -> run folder, for every staged cell."""
    return {f"{p.parts[-4]}/{p.parts[-2]}": p.parent
            for p in sorted((runs / grid).glob("*/*/*/config.yaml"))}


def harness(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def epoch_ends(run_dir: Path) -> list[int]:
    return [r["epoch"] for r in read_run_file(run_dir / "train_log.jsonl") or []
            if r.get("epoch_end")]


def progress(runs: Path, grid: str) -> int:
    """Events so far, over all attempts: cells started, epochs ended, cells completed."""
    events = 0
    for run_dir in cells(runs, grid).values():
        log = run_dir / "log.txt"
        events += log.read_text().count("] start ") if log.exists() else 0
        events += len(epoch_ends(run_dir)) + (cell_state(run_dir) == "completed")
    return events


def kill_at(proc: subprocess.Popen, runs: Path, grid: str, target: int, delay: float) -> None:
    """SIGKILL the run's process group once `target` events happened (+ `delay` s), or let it
    end by itself first."""
    deadline = time.time() + 600
    while proc.poll() is None and progress(runs, grid) < target and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    _wait_group_gone(proc.pid)


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """Until every process of the group has exited: the run's own exit comes first, and a
    loaded machine can take a moment to end its workers after the SIGKILL."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def test_random_sigkills_lose_nothing_and_retry_completes_every_cell(tmp_path: Path) -> None:
    grid = grid_file(tmp_path, "kill", epochs=5)
    reference = tmp_path / "reference"
    assert main(["run", "--grid", str(grid), "--executor", "debug",
                 "--runs-dir", str(reference)]) == 0
    runs = tmp_path / "runs"
    rng = random.Random(16)
    done_before: set[str] = set()
    for attempt in range(3):
        proc = harness("run", "--grid", str(grid), "--executor", "local", "--max-parallel", "2",
                       "--runs-dir", str(runs), "--mode", "retry")
        kill_at(proc, runs, "kill", progress(runs, "kill") + rng.randint(1, 12),
                rng.uniform(0, 0.5))
        states = {k: cell_state(d) for k, d in cells(runs, "kill").items()}
        done = {k for k, s in states.items() if s == "completed"}
        assert done_before <= done, f"kill {attempt} lost finished cells {done_before - done}"
        # nobody owns a cell any more: what was staged or running is stale, never pending
        assert set(states.values()) <= {"completed", "stale", "failed"}, states
        done_before = done
    assert main(["run", "--grid", str(grid), "--executor", "debug", "--runs-dir", str(runs),
                 "--mode", "retry"]) == 0
    expected = cells(reference, "kill")
    finished = cells(runs, "kill")
    assert set(finished) == set(expected) and {cell_state(d) for d in finished.values()} == {
        "completed"}
    for key, run_dir in finished.items():
        ours = read_run_file(run_dir / "metrics.json")
        theirs = read_run_file(expected[key] / "metrics.json")
        assert ours["variants"] == theirs["variants"], key  # bit-identical metrics
        a, b = (read_run_file(d / "predictions.npz") for d in (run_dir, expected[key]))
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), key


@pytest.mark.parametrize("executors", [("local", "local"), ("debug", "local"),
                                       ("debug", "debug")])
def test_two_runs_of_one_grid_at_once_train_each_cell_once(tmp_path: Path,
                                                           executors: tuple[str, str]) -> None:
    epochs = 3
    grid = grid_file(tmp_path, "race", epochs=epochs)
    runs = tmp_path / "runs"
    procs = [harness("run", "--grid", str(grid), "--executor", ex, "--runs-dir", str(runs))
             for ex in executors]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    found = cells(runs, "race")
    assert len(found) == 3
    for key, run_dir in found.items():
        assert cell_state(run_dir) == "completed", (key, outputs)
        status = read_run_file(run_dir / "status.json")
        starts = [line for line in (run_dir / "log.txt").read_text().splitlines()
                  if "] start " in line]
        assert status["attempts"] == 1 and len(starts) == 1, (key, starts, outputs)
        if key.startswith("simclr"):
            assert epoch_ends(run_dir) == list(range(1, epochs + 1)), (key, outputs)
    assert "Traceback" not in "".join(outputs)


def test_two_workers_on_one_config_train_it_once(tmp_path: Path) -> None:
    grid = grid_file(tmp_path, "pair", epochs=3)
    runs = tmp_path / "runs"
    (planned,) = plan_cells(str(grid), runs_dir=runs, only="method=simclr", seeds="0")
    stage(planned, "cached")
    config = Path(planned.cfg.run_dir) / "config.yaml"
    procs = [subprocess.Popen([sys.executable, "-m", "harness.worker", str(config)],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes in ([0, 0], [0, 3]), results  # the second finds it done, or owned and says so
    if codes == [0, 3]:
        (line,) = [err for code, err in results if code == 3][0].strip().splitlines()
        assert "not started" in line and "run by a worker (host " in line
    run_dir = config.parent
    assert cell_state(run_dir) == "completed"
    assert read_run_file(run_dir / "status.json")["attempts"] == 1
    assert epoch_ends(run_dir) == [1, 2, 3]
    json.loads((run_dir / "metrics.json").read_text())


def test_a_killed_forced_run_keeps_the_results_of_cells_it_had_not_begun(tmp_path: Path) -> None:
    grid = grid_file(tmp_path, "force", epochs=3)
    runs = tmp_path / "runs"
    assert main(["run", "--grid", str(grid), "--executor", "debug", "--runs-dir", str(runs)]) == 0
    before = {k: (d / "metrics.json").read_bytes() for k, d in cells(runs, "force").items()}
    proc = harness("run", "--grid", str(grid), "--executor", "local", "--max-parallel", "1",
                   "--runs-dir", str(runs), "--mode", "force")

    def begun() -> list[str]:
        return [k for k, d in cells(runs, "force").items()
                if "forced rerun" in (d / "log.txt").read_text()]

    deadline = time.time() + 600
    while not begun() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    started = begun()
    assert started, "the forced run never started a cell"
    for key, run_dir in cells(runs, "force").items():
        if key not in started:  # still queued when the run died: its results are untouched
            assert cell_state(run_dir) == "completed"
            assert (run_dir / "metrics.json").read_bytes() == before[key]
    assert main(["run", "--grid", str(grid), "--executor", "debug", "--runs-dir", str(runs),
                 "--mode", "retry"]) == 0
    assert {cell_state(d) for d in cells(runs, "force").values()} == {"completed"}
