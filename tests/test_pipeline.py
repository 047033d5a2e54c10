"""End to end through `harness run`: skip/retry/force, failures, kill and resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.config import DEFAULT_CPU_THREADS
from harness.store import cell_state, read_run_file, read_status

SMALL = """
name: {name}
budget: test
fixed: {{eval_seeds: first2, protocol: {{n_init: 2, max_iter: 50}}}}
grid: {{method: [simclr, kmeans], dataset: [synthetic], ir: [10], seed: [0, 1]}}
methods:
  simclr: {{params: {simclr}}}
"""


def grid_file(tmp_path: Path, name: str = "t", simclr: str = "{}") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SMALL.format(name=name, simclr=simclr))
    return str(path)


def run_dirs(runs_dir: Path, grid: str, method: str = "*") -> list[Path]:
    return sorted(p.parent for p in (runs_dir / grid).glob(f"{method}/*/*/config.yaml"))


def run(*args: str) -> int:
    return main(["run", *args])


def test_cached_skips_retry_reruns_failed_force_reruns_all(tmp_path: Path, runs_dir: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    grid = grid_file(tmp_path)
    assert run("--grid", grid, "--executor", "debug", "--runs-dir", str(runs_dir)) == 0
    dirs = run_dirs(runs_dir, "t")  # SimCLR seeds 0 and 1; deterministic k-means once
    assert len(dirs) == 3 and all(cell_state(d) == "completed" for d in dirs)
    for d in dirs:
        metrics = read_run_file(d / "metrics.json")
        assert {"acc", "nmi", "ari", "caa", "head_acc", "tail_acc"} <= set(
            metrics["variants"][metrics["primary"]]["metrics"])
        assert (d / "predictions.npz").exists()
        assert read_run_file(d / "env.json")["device"]["cpu_threads"] == DEFAULT_CPU_THREADS
    stamp = {d: (d / "metrics.json").stat().st_mtime_ns for d in dirs}
    capsys.readouterr()
    assert run("--grid", grid, "--executor", "debug", "--runs-dir", str(runs_dir)) == 0
    assert "0 to run, 3 skipped" in capsys.readouterr().out
    assert all((d / "metrics.json").stat().st_mtime_ns == stamp[d] for d in dirs)
    # mark one cell failed: retry reruns only it
    victim = dirs[0]
    status = read_status(victim)
    (victim / "status.json").write_text(json.dumps({**status, "state": "failed"}))
    assert run("--grid", grid, "--executor", "debug", "--runs-dir", str(runs_dir)) == 0
    assert cell_state(victim) == "failed"  # cached mode leaves failed cells alone
    assert run("--grid", grid, "--executor", "debug", "--runs-dir", str(runs_dir),
               "--mode", "retry") == 0
    assert cell_state(victim) == "completed"
    assert [d for d in dirs if (d / "metrics.json").stat().st_mtime_ns != stamp[d]] == [victim]
    assert run("--grid", grid, "--executor", "debug", "--runs-dir", str(runs_dir),
               "--mode", "force", "--only", "method=kmeans") == 0
    changed = {d for d in dirs if (d / "metrics.json").stat().st_mtime_ns != stamp[d]}
    assert changed == {victim} | set(run_dirs(runs_dir, "t", "kmeans"))


def test_failing_cells_do_not_take_others_down(tmp_path: Path, runs_dir: Path) -> None:
    """A non-finite loss and a crashing config fail their cells only; the store stays intact."""
    grid = tmp_path / "f.yaml"
    grid.write_text(SMALL.format(name="f", simclr="{}") + """
subgrids:
  nan: {method: [simclr], ir: [5], params: {lr: 1.0e+30, log_every: 1}}
  crash: {method: [simclr], ir: [2], params: {batch_size: 0}}
""")
    assert run("--grid", str(grid), "--executor", "local", "--max-parallel", "2",
               "--runs-dir", str(runs_dir)) == 1
    states = {(d.parent.name, d.name[:5]): cell_state(d) for d in run_dirs(runs_dir, "f", "simclr")}
    assert states[("synthetic_ir10", "seed0")] == "completed"
    assert states[("synthetic_ir5", "seed0")] == "failed"
    assert states[("synthetic_ir2", "seed0")] == "failed"
    nan_dir = next(d for d in run_dirs(runs_dir, "f", "simclr") if d.parent.name == "synthetic_ir5")
    failure = read_status(nan_dir)
    assert "non-finite loss" in failure["error"] and failure["failure"]["epoch"] == 1
    assert failure["failure"]["step"] >= 1
    crash_dir = next(d for d in run_dirs(runs_dir, "f", "simclr") if d.parent.name == "synthetic_ir2")
    assert read_status(crash_dir)["error_tail"]
    assert all(cell_state(d) == "completed" for d in run_dirs(runs_dir, "f", "kmeans"))


def wait_for_epoch(runs_dir: Path, epoch: int, timeout: float = 300) -> Path | None:
    """Poll the run store until the simclr cell has checkpointed epoch `epoch`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = run_dirs(runs_dir, "k", "simclr")
        if found and (found[0] / "ckpt" / "last.pt").exists():
            log = found[0] / "train_log.jsonl"
            epochs = [json.loads(x)["epoch"] for x in log.read_text().splitlines()
                      if '"epoch_end"' in x] if log.exists() else []
            if epochs and max(epochs) >= epoch:
                return found[0]
        time.sleep(0.05)
    return None


def test_killed_cell_resumes_from_checkpoint(tmp_path: Path, runs_dir: Path) -> None:
    """SIGKILL mid-training, then `--mode retry`: resumes from ckpt/last.pt, same final metrics."""
    params = "{epochs: 8, ckpt_every: 1, batch_size: 32}"
    grid = grid_file(tmp_path, "k", params)
    assert run("--grid", grid, "--executor", "debug", "--runs-dir", str(runs_dir), "--dry-run") == 0
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--grid", grid,
                             "--executor", "local", "--runs-dir", str(runs_dir),
                             "--only", "method=simclr,seed=0", "--max-parallel", "1"],
                            start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        cell = wait_for_epoch(runs_dir, 2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert cell is not None, "training never reached epoch 2"
    assert cell_state(cell) == "stale"  # its owner is gone: cached and retry both run it
    assert run("--grid", grid, "--executor", "debug", "--runs-dir", str(runs_dir),
               "--only", "method=simclr,seed=0", "--mode", "retry") == 0
    assert cell_state(cell) == "completed"
    assert "resume=True" in (cell / "log.txt").read_text()
    resumed = read_run_file(cell / "metrics.json")["variants"]
    # the same cell, uninterrupted, in another run store
    other = tmp_path / "runs2"
    assert run("--grid", grid, "--executor", "debug", "--runs-dir", str(other),
               "--only", "method=simclr,seed=0") == 0
    fresh = read_run_file(run_dirs(other, "k", "simclr")[0] / "metrics.json")["variants"]
    for key in fresh:
        assert resumed[key]["metrics"] == pytest.approx(fresh[key]["metrics"], abs=1e-6)


@pytest.mark.parametrize("argv,needle", [
    (["run", "--grid", "dmeo"], "unknown grid 'dmeo'. Did you mean: demo"),
    (["run", "--grid", "smoke", "--only", "method=simclrr"], "unknown method 'simclrr'. Did you mean: simclr"),
    (["run", "--grid", "smoke", "--only", "dataset=digit"], "unknown dataset 'digit'. Did you mean: digits"),
    (["run", "--grid", "smoke", "--only", "colour=red"], "--only"),
    (["describe", "digits", "--ir", "0.5"], "imbalance ratio 0.5 is invalid"),
])
def test_bad_input_gives_one_clear_line(argv: list[str], needle: str, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "harness.cli", *argv, "--runs-dir", str(tmp_path)]
                         if argv[0] == "run" else [sys.executable, "-m", "harness.cli", *argv],
                         capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in out.stderr


def test_bad_ir_in_grid_file(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text("grid: {method: [simclr], dataset: [digits], ir: [0.5], seed: [0]}\n")
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--grid", str(path),
                          "--runs-dir", str(tmp_path)], capture_output=True, text=True)
    assert out.returncode == 2 and "imbalance ratio" in out.stderr and str(path) in out.stderr


def test_missing_dataset_files_stop_the_run_before_any_write(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--grid", "paper_table2",
                          "--only", "method=kmeans,dataset=cifar10", "--runs-dir", str(runs),
                          "--root", str(tmp_path / "empty")], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "cifar10" in line and str(tmp_path / "empty") in line
    assert "harness prepare --dataset cifar10" in line
    assert not runs.exists()


def test_ctrl_c_marks_cells_interrupted_and_retry_resumes(tmp_path: Path, runs_dir: Path) -> None:
    # 30 epochs: the Ctrl-C must land mid-training (with 8, a fast machine finished first)
    grid = grid_file(tmp_path, "k", "{epochs: 30, ckpt_every: 1, batch_size: 32}")
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--grid", grid,
                             "--executor", "local", "--runs-dir", str(runs_dir),
                             "--only", "method=simclr,seed=0", "--max-parallel", "1"],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            # a test run started in the background (`cmd &` without job control)
                            # inherits SIGINT ignored, and Python then keeps it ignored: the
                            # Ctrl-C would never land (the run completed, exit 0)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        cell = wait_for_epoch(runs_dir, 1)
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
        _, err = proc.communicate(timeout=120)
    assert cell is not None and proc.returncode == 130, (
        proc.returncode, cell and cell_state(cell), err[-2000:])
    assert "Traceback" not in err and "--mode retry" in err
    assert cell_state(cell) == "interrupted"
    assert run("--grid", grid, "--executor", "debug", "--runs-dir", str(runs_dir),
               "--only", "method=simclr,seed=0", "--mode", "retry") == 0
    assert cell_state(cell) == "completed" and "resume=True" in (cell / "log.txt").read_text()


def test_completed_cells_are_reused_across_grids_never_modified(tmp_path: Path, runs_dir: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    first = grid_file(tmp_path, "first")
    second = grid_file(tmp_path, "second")  # the same cells under another grid name
    assert run("--grid", first, "--executor", "debug", "--runs-dir", str(runs_dir)) == 0
    originals = run_dirs(runs_dir, "first")
    stamps = {d: (d / "metrics.json").read_bytes() for d in originals}
    capsys.readouterr()
    assert run("--grid", second, "--executor", "debug", "--runs-dir", str(runs_dir)) == 0
    assert "0 to run, 0 skipped, 3 reused from other grids" in capsys.readouterr().out
    linked = run_dirs(runs_dir, "second")
    assert len(linked) == 3 and all(d.is_symlink() and cell_state(d) == "completed" for d in linked)
    assert main(["report", "--grid", second, "--runs-dir", str(runs_dir), "--format", "md",
                 "--no-figures", "--out", str(tmp_path / "rep")]) == 0
    table = (tmp_path / "rep" / "second.md").read_text()
    assert "SimCLR" in table and " seeds)" not in table  # every cell complete: no coverage marks
    # force under the second grid replaces the links with its own runs, the first grid untouched
    assert run("--grid", second, "--executor", "debug", "--runs-dir", str(runs_dir),
               "--mode", "force", "--only", "method=kmeans") == 0
    forced = [d for d in run_dirs(runs_dir, "second") if "kmeans" in str(d)]
    assert forced and all(not d.is_symlink() and cell_state(d) == "completed" for d in forced)
    assert {d: (d / "metrics.json").read_bytes() for d in originals} == stamps
