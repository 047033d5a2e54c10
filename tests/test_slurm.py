"""End to end on a real SLURM cluster (`../shared/slurm/local_cluster.sh start`; CI starts it).

Without a cluster these tests are skipped, except under CI=true, where they fail: CI must run them.
The time-limit cell is submitted first (module fixture) and trains while the other tests run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from harness.cli import main as harness
from harness.executors.scheduler import live_jobs
from harness.store import read_run_file, read_status
from slurm_helpers import cli, grid_file, run_dirs, wait_for

pytestmark = pytest.mark.slurm
REPO = Path(__file__).resolve().parent.parent
TIME_LIMIT_SIGNAL_S = 1  # USR2 1 s (+ slurmctld's 30 s check period) before the 1-min limit


def _states(runs: Path, grid: str) -> list[str]:
    return [read_status(d)["state"] for d in run_dirs(runs, grid)]


def _sacct_state(job: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job],
                         capture_output=True, text=True).stdout.split()
    return out[0] if out else ""


def _slurm_local(tmp_path: Path) -> tuple[str, ...]:
    """`harness run` options: the local test cluster's profile, data under `tmp_path`."""
    return ("--executor", "slurm", "--profile", "local", "--allow-dirty", "--root",
            str(tmp_path / "data"))


@pytest.fixture(scope="module")
def jobs_to_cancel() -> Any:
    """Job ids this module submitted; whatever still runs at the end is cancelled."""
    ids: list[str] = []
    yield ids
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


def _seconds_per_epoch() -> float:
    """This machine's speed right now: seconds per tiny SimCLR epoch on one thread."""
    from harness.config import CellConfig
    from harness.registry import method_class

    cls = method_class("simclr")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        params = cls.resolve_params("synthetic", {"epochs": 4}, budget="test")
        cfg = CellConfig(method="simclr", dataset="synthetic", ir=10, seed=0, params=params,
                         device="cpu")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            method = cls()
            method.setup(cfg, Path(tmp))
            t0 = time.time()
            method.train(cfg, Path(tmp), resume=False)
            return (time.time() - t0) / 4
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def time_limit_run(cluster: None, tmp_path_factory: pytest.TempPathFactory,
                   jobs_to_cancel: list[str]) -> Iterator[dict[str, Any]]:
    """Submit a cell that outlasts a 1-minute limit, and run the same cell uninterrupted."""
    tmp = tmp_path_factory.mktemp("time_limit")
    data = tmp / "data"
    epochs = max(40, int(62 / _seconds_per_epoch()))  # ~1 min of training: hits the limit
    grid = grid_file(tmp / "grid.yaml", "slurm_time_limit",
                 f"  params: {{epochs: {epochs}, ckpt_every: 1, log_every: 100000}}\n"
                 "grid: {method: [simclr], dataset: [synthetic], ir: [10], seed: [0]}\n")
    profile = tmp / "one_minute.yaml"
    profile.write_text(f"partition: debug\ncpus_per_task: 1\nmem_gb: 1\ntimeout_min: 1\n"
                       f"signal_delay_s: {TIME_LIMIT_SIGNAL_S}\nmax_num_timeout: 8\n")
    code, out = cli("run", "--grid", str(grid), "--executor", "slurm", "--profile",
                     str(profile), "--runs-dir", str(tmp / "slurm"), "--root", str(data),
                     "--allow-dirty")
    assert code == 0, out
    jobs_to_cancel += read_status(run_dirs(tmp / "slurm", "slurm_time_limit")[0])["job_ids"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(tmp / "debug.out", "w") as log:
        debug = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--grid",
                                  str(grid), "--executor", "debug", "--runs-dir",
                                  str(tmp / "debug"), "--root", str(data)], env=env,
                                 stdout=log, stderr=subprocess.STDOUT)
    yield {"tmp": tmp, "epochs": epochs, "debug": debug}
    if debug.poll() is None:
        debug.kill()


def test_smoke_grid_runs_as_job_arrays_and_report_reads_them(tmp_path: Path,
                                                               jobs_to_cancel: list[str]) -> None:
    runs = tmp_path / "runs"
    base = ("--grid", "smoke", "--runs-dir", str(runs))
    submit = ("run", *base, "--executor", "slurm", "--profile", "local", "--allow-dirty",
              "--root", str(tmp_path / "data"))
    code, out = cli(*submit)
    assert code == 0, out
    # simclr (fake GPU) as an array; deterministic kmeans has one cell: a plain job
    assert "3 to submit" in out and out.count("\narray ") == 1 and "\njob " in out
    dirs = run_dirs(runs, "smoke")
    ids = [read_status(d)["job_ids"][-1] for d in dirs]
    jobs_to_cancel += ids
    simclr = [(d, i) for d, i in zip(dirs, ids) if "/simclr/" in str(d)]
    # SimCLR's two seeds run as one array; deterministic k-means is one cell, a plain job
    assert len(simclr) == 2 and len({i.split("_")[0] for _, i in simclr}) == 1
    assert all("_" in i for _, i in simclr) and len({i.split("_")[0] for i in ids}) == 2
    assert any(read_status(d)["state"] != "completed" for d in dirs), "submission blocked"
    assert all((d / "job.pkl").is_file() for d in dirs)
    # a second submission while the jobs are queued or running submits nothing
    code, again = cli(*submit)
    assert code == 0 and "0 to submit" in again, again

    wait_for(lambda: all(s in ("completed", "failed", "killed") for s in _states(runs, "smoke")),
          240, "the smoke arrays")
    assert _states(runs, "smoke") == ["completed"] * 3, [read_status(d) for d in dirs]
    array_dir, array_id = simclr[0]
    env = read_run_file(array_dir / "env.json")
    assert env["slurm"]["SLURM_ARRAY_JOB_ID"] == array_id.split("_")[0]
    copy = Path(read_status(array_dir)["code_dir"])
    assert read_run_file(copy / "code_copy.json")["git_sha"] == env["git_sha"]
    code, status = cli("status", *base)
    assert "3/3 runs done" in status, status
    code, report = cli("report", *base, "--format", "md", "--no-figures",
                        "--out", str(tmp_path / "report"))
    assert code == 0 and "SimCLR" in report and "K-means" in report, report
    assert "missing" not in report.lower() and "FAILED" not in report


def test_job_imports_harness_from_the_frozen_code_copy(tmp_path: Path) -> None:
    from harness import codecopy
    from harness.executors.slurm import PROJECT_ROOT, ArrayGroup, SlurmExecutor
    from harness.profiles import load_profile

    copy, _ = codecopy.freeze(PROJECT_ROOT, tmp_path, allow_dirty=True)
    group = ArrayGroup("local", load_profile("local").base)
    ex = SlurmExecutor(code=copy).make_executor(group, tmp_path / "submitit" / "%j", "probe")

    def where() -> dict[str, Any]:  # defined here, so it is pickled by value
        import os
        import sys

        import harness
        import torch

        return {"harness": harness.__file__, "python": sys.executable,
                "plugin_root": os.environ.get("HARNESS_PLUGIN_ROOT"),
                "threads": torch.get_num_threads(), "cwd": os.getcwd(),
                "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}

    seen = ex.submit(where).result()
    assert Path(seen["harness"]).resolve() == (copy / "harness" / "__init__.py").resolve()
    assert not Path(seen["harness"]).resolve().is_relative_to(REPO / "harness")
    assert seen["python"] == sys.executable  # the project's virtual environment
    assert seen["plugin_root"] == str(copy) and seen["cwd"] == str(copy)
    assert seen["threads"] == 1 and seen["gpus"] == "0"  # profile: 1 CPU, 1 (fake) GPU


def test_cancelled_job_shows_as_killed_in_status(tmp_path: Path,
                                                 jobs_to_cancel: list[str]) -> None:
    runs = tmp_path / "runs"
    grid = grid_file(tmp_path / "grid.yaml", "slurm_cancel",
                 "  params: {epochs: 100000}\n"
                 "grid: {method: [simclr], dataset: [synthetic], ir: [10], seed: [0]}\n")
    base = ("--grid", str(grid), "--runs-dir", str(runs))
    code, out = cli("run", *base, *_slurm_local(tmp_path))
    assert code == 0, out
    run_dir = run_dirs(runs, "slurm_cancel")[0]
    job = read_status(run_dir)["job_ids"][-1]
    jobs_to_cancel.append(job)
    wait_for(lambda: read_status(run_dir)["state"] == "running", 180, "the cell to start training")
    subprocess.run(["scancel", job], check=True)
    wait_for(lambda: _sacct_state(job) == "CANCELLED", 60, f"sacct to report job {job} cancelled")
    # the cell stays running while its process winds down (it holds the cell lock until then)
    wait_for(lambda: "1 failed" in cli("status", *base)[1], 60, "the cancelled cell's process to end")
    code, status = cli("status", *base, "--failed")
    assert "0/1 runs done" in status and "1 failed" in status, status
    assert f"job {job}: cancelled by scheduler (CANCELLED)" in status
    assert read_status(run_dir)["state"] == "killed"
    assert f"log: {runs}/_submitit/slurm_cancel/{job}/{job}_0_log.err" in status


def test_a_refused_submission_fails_its_cells_with_sbatch_s_reason(tmp_path: Path) -> None:
    profile = tmp_path / "nowhere.yaml"
    profile.write_text("partition: no_such_partition\ncpus_per_task: 1\nmem_gb: 1\n")
    runs = tmp_path / "runs"
    code = harness(["run", "--grid", "smoke", "--runs-dir", str(runs), "--only", "method=kmeans",
                    "--executor", "slurm", "--profile", str(profile), "--allow-dirty",
                    "--root", str(tmp_path / "data")])
    assert code == 2
    for run_dir in run_dirs(runs, "smoke"):
        status = read_status(run_dir)
        assert status["state"] == "failed" and not status.get("job_ids")
        assert "submission failed" in status["error"] and "partition" in status["error"].lower()


def test_failing_cell_shows_its_error_and_retry_resubmits_only_it(
        tmp_path: Path, jobs_to_cancel: list[str]) -> None:
    runs = tmp_path / "runs"
    grid = grid_file(tmp_path / "grid.yaml", "slurm_fail",
                 "methods: {simclr: {params.data_path: no_such_path}}\n"
                 "grid: {method: [simclr, kmeans], dataset: [synthetic], ir: [10], seed: [0]}\n")
    base = ("--grid", str(grid), "--runs-dir", str(runs))
    code, out = cli("run", *base, *_slurm_local(tmp_path))
    assert code == 0, out
    simclr, kmeans = (run_dirs(runs, "slurm_fail")[i] for i in (1, 0))
    assert "simclr" in str(simclr) and "kmeans" in str(kmeans)
    jobs_to_cancel += [read_status(d)["job_ids"][-1] for d in (simclr, kmeans)]
    wait_for(lambda: read_status(simclr)["state"] == "failed"
          and read_status(kmeans)["state"] == "completed", 180, "the failing cell")
    code, status = cli("status", *base, "--failed")
    assert "params.data_path = 'no_such_path'" in status and f"log: {simclr}/log.txt" in status
    before = {d: read_status(d)["job_ids"] for d in (simclr, kmeans)}
    # the cell records `failed` before its job process exits: wait until the scheduler is done
    wait_for(lambda: not live_jobs([simclr, kmeans]), 120, "the jobs to leave the queue")
    code, out = cli("run", *base, *_slurm_local(tmp_path), "--mode", "retry")
    assert code == 0 and "1 to submit" in out, out
    assert read_status(kmeans)["job_ids"] == before[kmeans]
    assert len(read_status(simclr)["job_ids"]) == 2
    jobs_to_cancel.append(read_status(simclr)["job_ids"][-1])
    wait_for(lambda: read_status(simclr)["state"] == "failed", 180, "the retried cell")


def test_time_limit_requeues_and_resumes_to_the_uninterrupted_metrics(
        time_limit_run: dict[str, Any]) -> None:
    tmp = time_limit_run["tmp"]
    run_dir = run_dirs(tmp / "slurm", "slurm_time_limit")[0]
    wait_for(lambda: read_status(run_dir)["state"] in ("completed", "failed", "killed"), 420,
          f"the time-limited cell ({time_limit_run['epochs']} epochs)")
    status = read_status(run_dir)
    log = (run_dir / "log.txt").read_text()
    assert status["state"] == "completed", (status, log)
    assert status["attempts"] >= 2 and "requeueing" in log and "resume=True" in log, log
    assert int(read_run_file(run_dir / "env.json")["slurm"]["SLURM_RESTART_COUNT"]) >= 1
    debug = time_limit_run["debug"]
    assert debug.wait(timeout=300) == 0, (tmp / "debug.out").read_text()
    uninterrupted = run_dirs(tmp / "debug", "slurm_time_limit")[0]
    assert uninterrupted.name == run_dir.name  # the same cell (same uid)
    ours, ref = (json.loads((d / "metrics.json").read_text()) for d in (run_dir, uninterrupted))
    assert {k: v["metrics"] for k, v in ours["variants"].items()} == \
        {k: v["metrics"] for k, v in ref["variants"].items()}
    assert ours["train"]["final_loss"] == ref["train"]["final_loss"]
    assert ours["train"]["steps"] == ref["train"]["steps"]
