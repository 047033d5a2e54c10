"""A data-parallel cell on the real local SLURM cluster: one job, one task per rank (gloo on CPU).

Skipped without a cluster (failed under CI=true), like tests/test_slurm.py, whose helpers it uses;
a module of its own so that it does not wait on that module's time-limit cell.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from harness.store import read_status
from slurm_helpers import cli, grid_file, run_dirs, wait_for

pytestmark = pytest.mark.slurm


def test_a_two_task_cell_trains_on_two_gloo_ranks_and_reports(cluster: None,
                                                                tmp_path: Path) -> None:
    profile = tmp_path / "two_cpu_ranks.yaml"
    profile.write_text("partition: debug\ngpus_per_node: 0\ncpus_per_task: 1\nmem_gb: 1\n"
                       "timeout_min: 10\n")
    grid = grid_file(tmp_path / "grid.yaml", "slurm_w2",
                 "  world_size: 2\n"
                 "methods: {simclr: {params: {epochs: 1, batch_size: 20}}}\n"
                 "grid: {method: [simclr], dataset: [synthetic], ir: [10], seed: [0]}\n")
    runs = tmp_path / "runs"
    base = ("--grid", str(grid), "--runs-dir", str(runs))
    code, out = cli("run", *base, "--executor", "slurm", "--profile", str(profile),
                     "--allow-dirty", "--root", str(tmp_path / "data"))
    assert code == 0 and "nodes=1 tasks/node=2 gpus/node=0" in out, out
    run_dir = run_dirs(runs, "slurm_w2")[0]
    job_id = read_status(run_dir)["job_ids"][-1]
    assert "_" not in job_id  # a job of its own, not an array task
    job = pickle.loads((run_dir / "job.pkl").read_bytes())
    assert "#SBATCH --ntasks-per-node=2" in job.paths.submission_file.read_text()
    wait_for(lambda: read_status(run_dir)["state"] in ("completed", "failed", "killed"), 240,
          "the two-rank cell")
    assert read_status(run_dir)["state"] == "completed", (run_dir / "log.txt").read_text()
    assert job.results() == ["completed", "rank"]  # task 0 owned the cell, task 1 trained
    card = json.loads((run_dir / "metrics.json").read_text())["run_card"]
    assert card["world_size"] == 2 and card["batch_per_device"] == 10
    code, report = cli("report", *base, "--format", "md", "--no-figures",
                        "--out", str(tmp_path / "report"))
    assert code == 0 and "SimCLR" in report and "missing" not in report.lower(), report


def _two_rank_seconds_per_epoch(tmp: Path) -> float:
    """This machine's speed right now: seconds per tiny two-rank SimCLR epoch (1 thread each)."""
    import torch

    from ddp_helpers import cell, run_ranks

    cfg = cell("simclr", tmp / "probe", 2, epochs=3, batch_size=20)
    run_ranks(cfg)
    return torch.load(tmp / "probe" / "summary.pt")["seconds"] / 3


def test_a_two_task_cell_requeued_at_its_time_limit_resumes_on_both_ranks(
        cluster: None, tmp_path: Path) -> None:
    """submitit checkpoints on task 0 and requeues the job; both tasks restart, rank 0 tells
    rank 1 to resume, and the cell completes every epoch once on 2 ranks."""
    epochs = max(40, int(75 / _two_rank_seconds_per_epoch(tmp_path)))  # outlasts the minute
    profile = tmp_path / "two_ranks_one_minute.yaml"
    profile.write_text("partition: debug\ngpus_per_node: 0\ncpus_per_task: 1\nmem_gb: 1\n"
                       "timeout_min: 1\nsignal_delay_s: 1\nmax_num_timeout: 8\n")
    grid = grid_file(tmp_path / "grid.yaml", "slurm_w2_limit",
                     "  world_size: 2\n"
                     f"methods: {{simclr: {{params: {{epochs: {epochs}, batch_size: 20, "
                     "ckpt_every: 1, log_every: 100000}}}\n"
                     "grid: {method: [simclr], dataset: [synthetic], ir: [10], seed: [0]}\n")
    runs = tmp_path / "runs"
    code, out = cli("run", "--grid", str(grid), "--runs-dir", str(runs), "--executor", "slurm",
                    "--profile", str(profile), "--allow-dirty", "--root", str(tmp_path / "data"))
    assert code == 0, out
    run_dir = run_dirs(runs, "slurm_w2_limit")[0]
    try:
        wait_for(lambda: read_status(run_dir)["state"] in ("completed", "failed", "killed"), 600,
                 f"the time-limited two-rank cell ({epochs} epochs)")
    finally:
        import subprocess

        subprocess.run(["scancel", *read_status(run_dir)["job_ids"]], capture_output=True)
    status, log = read_status(run_dir), (run_dir / "log.txt").read_text()
    assert status["state"] == "completed", (status, log)
    assert status["attempts"] >= 2 and "requeueing" in log and "resume=True" in log, log
    ends = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()
            if '"epoch_end"' in line]
    assert sorted({e["epoch"] for e in ends}) == list(range(1, epochs + 1))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train"]["steps"] == epochs * ends[0]["step"]  # no step lost or repeated
    assert metrics["run_card"]["world_size"] == 2
