"""SLURM submission without a cluster: profiles, array grouping, the sbatch preview (golden),
mocked submission, code copies and the dirty-tree refusal, sacct parsing and reconciliation."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from submitit.core.core import Job
from submitit.core.test_core import MockedSubprocess

from harness import codecopy, provenance
from harness.errors import HarnessError
from harness.executors import scheduler
from harness.executors.slurm import (ArrayGroup, SlurmExecutor, group_cells, sbatch_parameters,
                                     sbatch_preview, submitit_folder)
from harness.profiles import load_profile
from harness.report import status_table
from harness.runner import claim, plan_cells, release, stage
from harness.store import cell_state, read_status, update_status

GOLDEN_PROFILE = """\
description: fixed profile for the golden sbatch preview
partition: gpu
account: lab
qos: high
constraint: a100
gpus_per_node: 2
cpus_per_task: 4
mem_gb: 16.5
timeout_min: 90
array_parallelism: 3
max_num_timeout: 2
signal_delay_s: 60
sbatch_extra: ["--mail-type=FAIL", "#SBATCH --exclusive"]
setup: ["module load cuda/12.4"]
overrides:
  - {dataset: tinyimagenet, timeout_min: 1440}
"""

GOLDEN_SBATCH = """\
#!/bin/bash

# Parameters
#SBATCH --account=lab
#SBATCH --array=0-4%3
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=4
#SBATCH --error=<RUNS>/_submitit/lt_main/%A_%a/%A_%a_0_log.err
#SBATCH --exclusive
#SBATCH --gpus-per-node=2
#SBATCH --job-name=harness-lt_main-golden
#SBATCH --mail-type=FAIL
#SBATCH --mem=16896MB
#SBATCH --nodes=1
#SBATCH --open-mode=append
#SBATCH --output=<RUNS>/_submitit/lt_main/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=high
#SBATCH --signal=USR2@60
#SBATCH --time=90
#SBATCH --wckey=submitit

# setup
module load cuda/12.4
export PYTHONPATH=<RUNS>/_code/0123456789ab${PYTHONPATH:+:$PYTHONPATH}
export HARNESS_PLUGIN_ROOT=<RUNS>/_code/0123456789ab
export OMP_NUM_THREADS=4 MKL_NUM_THREADS=4
cd <RUNS>/_code/0123456789ab

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output <RUNS>/_submitit/lt_main/%A_%a/%A_%a_%t_log.out \
--error <RUNS>/_submitit/lt_main/%A_%a/%A_%a_%t_log.err <PYTHON> -u -m submitit.core._submit \
<RUNS>/_submitit/lt_main/%j
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- profiles ------------------------------------------------------------------------------------
def test_shipped_profiles_load_with_the_documented_settings() -> None:
    default = load_profile("default")
    assert (default.base.gpus_per_node, default.base.cpus_per_task, default.base.mem_gb,
            default.base.timeout_min, default.base.array_parallelism,
            default.base.max_num_timeout) == (1, 8, 32, 720, 16, 3)
    assert default.resolve("simclr", "tinyimagenet", 10).timeout_min == 1440
    assert default.resolve("simclr", "cifar10", 10).timeout_min == 720
    assert load_profile("cpu").base.gpus_per_node == 0
    local = load_profile("local")
    assert local.base.partition == "debug" and local.base.cpus_per_task == 1
    assert local.resolve("kmeans", "synthetic", 10, "cpu").gpus_per_node == 0
    assert local.resolve("simclr", "synthetic", 10, "gpu1").gpus_per_node == 1
    gpu4 = load_profile("gpu4").base
    assert (gpu4.gpus_per_node, gpu4.nodes, gpu4.cpus_per_task) == (4, 1, 8)


@pytest.mark.parametrize("body, words", [
    ("gpus: 1\n", ["unknown key 'gpus'", "gpus_per_node"]),
    ("timeout_min: 12h\n", ["key 'timeout_min'", "integer >= 1"]),
    ("mem_gb: 0\n", ["key 'mem_gb'", "> 0"]),
    ("setup: module load cuda\n", ["key 'setup'", "list of strings"]),
    ("overrides: [{dataset: cifar10, cpus_per_task: 0}]\n", ["overrides[0].cpus_per_task"]),
    ("overrides: [{cpus_per_task: 2}]\n", ["overrides[0]", "needs at least one of method"]),
    ("overrides: [{dataset: cifar10, color: red}]\n", ["unknown key 'overrides[0].color'"]),
    ("sbatch_extra: ['-N 1']\n", ["sbatch_extra", "long option"]),
    ("- just a list\n", ["must be a YAML mapping"]),
])
def test_profile_errors_name_the_file_and_the_key(tmp_path: Path, body: str,
                                                   words: list[str]) -> None:
    path = _write(tmp_path / "bad.yaml", body)
    with pytest.raises(HarnessError) as err:
        load_profile(str(path))
    assert str(path) in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(HarnessError, match="unknown SLURM profile 'nope'.*cpu, default, gpu4, local"):
        load_profile("nope")


def test_method_resource_dicts_and_override_order(tmp_path: Path) -> None:
    prof = load_profile(str(_write(tmp_path / "p.yaml", GOLDEN_PROFILE)))
    res = prof.resolve("m", "tinyimagenet", 10, {"gpus": 4, "timeout_min": 30})
    assert (res.gpus_per_node, res.timeout_min) == (4, 1440)  # profile overrides win
    with pytest.raises(HarnessError, match="unknown resources key 'gpu'"):
        prof.resolve("m", "cifar10", 10, {"gpu": 1})


# -- grouping and preview ------------------------------------------------------------------------
def _smoke_cfgs(runs_dir: Path) -> list:
    return [c.cfg for c in plan_cells("smoke", runs_dir=runs_dir)]


def test_cells_are_grouped_into_one_array_per_resource_profile(runs_dir: Path) -> None:
    cfgs = _smoke_cfgs(runs_dir)
    by_method = {g.profile: sorted({c.method for c in g.cfgs}) for g in group_cells(cfgs)}
    assert by_method == {"default": ["simclr"], "cpu": ["kmeans"]}
    local = group_cells(cfgs, "local")
    assert len(local) == 2 and {g.profile for g in local} == {"local"}
    assert {g.resources.gpus_per_node: len(g.cfgs) for g in local} == {1: 2, 0: 1}  # deterministic k-means: one cell


def test_sbatch_preview_matches_the_golden_text(tmp_path: Path) -> None:
    prof = load_profile(str(_write(tmp_path / "golden.yaml", GOLDEN_PROFILE)))
    group = ArrayGroup(prof.name, prof.resolve("simclr", "cifar10", 10), [None] * 5)
    runs = tmp_path / "runs"
    text = sbatch_preview(group, submitit_folder(runs, "lt_main"), "harness-lt_main-golden",
                          runs / "_code" / "0123456789ab")
    text = text.replace(str(runs), "<RUNS>").replace(sys.executable, "<PYTHON>")
    assert text == GOLDEN_SBATCH


def test_mocked_submission_makes_two_arrays_and_records_jobs(runs_dir: Path) -> None:
    planned = plan_cells("smoke", runs_dir=runs_dir)
    claimed, busy = claim(planned, "cached", "slurm")
    assert len(claimed) == 3 and not busy
    code = runs_dir / "_code" / "fake"
    mock = MockedSubprocess(known_cmds=["srun", "sbatch"])
    with mock.context():
        jobs = SlurmExecutor(profile="local", code=code, quiet=True).submit(claimed)
    release(claimed)
    # SimCLR's two seeds are an array; k-means (deterministic) is one cell, a plain job
    assert sorted(j.job_id for j in jobs) == ["12_0", "12_1", "13"]
    for cell in planned:
        run_dir = Path(cell.cfg.run_dir)
        status = read_status(run_dir)
        assert status["state"] == "pending" and status["profile"] == "local"
        assert cell_state(run_dir) == "pending"  # queued on SLURM: no lock, the job id counts
        job = pickle.loads((run_dir / "job.pkl").read_bytes())
        assert status["job_ids"] == [job.job_id]
        assert str(code) in (run_dir / "config.yaml").read_text()  # plugin_root = the copy
        submitted = job.paths.submitted_pickle.read_bytes()
        assert b"harness._plugins" not in submitted and b"RunCell" in submitted
        assert pickle.loads(submitted).function.handover in {c.lock.token for c in claimed}
    # what was submitted is what `plan` previews
    groups = group_cells([c.cfg for c in planned], "local")
    for group, array in zip(groups, ("12", "13")):
        sbatch = Job(submitit_folder(runs_dir, "smoke"), array).paths.submission_file.read_text()
        preview = sbatch_preview(group, submitit_folder(runs_dir, "smoke"),
                                 "harness-smoke-local", code)
        assert sbatch == preview


# -- code copy -----------------------------------------------------------------------------------
def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("A = 1\n")
    (repo / ".gitignore").write_text("ignored.txt\n")
    (repo / "ignored.txt").write_text("local only\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    return repo


def test_clean_tree_is_copied_once_by_sha(repo: Path, tmp_path: Path) -> None:
    copy, state = codecopy.freeze(repo, tmp_path / "runs")
    assert not state.dirty and copy.name == state.git_sha[:12]
    assert (copy / "pkg" / "a.py").read_text() == "A = 1\n"
    assert not (copy / "ignored.txt").exists() and not (copy / codecopy.DIFF).exists()
    assert codecopy.freeze(repo, tmp_path / "runs")[0] == copy
    info = provenance.git_info(copy)
    assert info == {"git_sha": state.git_sha, "dirty": False, "diff_sha256": None}


def test_dirty_tree_is_refused_unless_allowed_and_the_diff_is_stored(repo: Path,
                                                                     tmp_path: Path) -> None:
    (repo / "pkg" / "a.py").write_text("A = 2\n")
    (repo / "pkg" / "b.py").write_text("B = 3\n")
    with pytest.raises(HarnessError, match=r"uncommitted changes \(M pkg/a.py, \?\? pkg/b.py\)"
                                           r".*--allow-dirty"):
        codecopy.freeze(repo, tmp_path / "runs")
    assert not (tmp_path / "runs" / "_code").exists()
    copy, state = codecopy.freeze(repo, tmp_path / "runs", allow_dirty=True)
    assert copy.name.startswith(f"{state.git_sha[:12]}-dirty-")
    assert (copy / "pkg" / "a.py").read_text() == "A = 2\n"
    assert (copy / "pkg" / "b.py").read_text() == "B = 3\n"
    diff = (copy / codecopy.DIFF).read_text()
    assert "+A = 2" in diff and "+B = 3" in diff
    assert provenance.git_info(copy)["dirty"] is True
    assert (copy / "pkg" / "a.py").stat().st_mode & 0o222 == 0  # frozen: read-only files
    (repo / "pkg" / "a.py").write_text("A = 4\n")  # another edit: another copy
    assert codecopy.freeze(repo, tmp_path / "runs", allow_dirty=True)[0] != copy


def test_a_folder_outside_git_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="not a usable git checkout"):
        codecopy.freeze(tmp_path, tmp_path / "runs")


# -- scheduler states and reconciliation ---------------------------------------------------------
def test_sacct_output_is_parsed_with_array_ranges_and_reasons() -> None:
    text = ("JobID|State\n12_[0-2%2]|PENDING\n13_1|CANCELLED by 0\n13_1.batch|CANCELLED\n"
            "14|TIMEOUT\n")
    assert scheduler.parse_sacct(text) == {"12_0": "PENDING", "12_1": "PENDING",
                                           "12_2": "PENDING", "13_1": "CANCELLED",
                                           "14": "TIMEOUT"}


def test_reconcile_marks_dead_jobs_killed_and_status_shows_why(
        runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    planned = plan_cells("smoke", runs_dir=runs_dir)
    dirs = [Path(c.cfg.run_dir) for c in planned]
    for cell in planned:
        stage(cell, "cached")
    log = runs_dir / "5_0_0_log.err"
    log.write_text("slurmstepd: error: *** JOB 5 ON vm CANCELLED AT 2026-01-01 ***\n")
    update_status(dirs[0], state="running", job_ids=["5_0"], scheduler_log=str(log))
    update_status(dirs[1], state="pending", job_ids=["5_1"])
    update_status(dirs[2], state="running", job_ids=["6"])
    states = {"5_0": "CANCELLED", "5_1": "TIMEOUT", "6": "RUNNING"}
    monkeypatch.setattr(scheduler, "job_states", lambda ids: ({i: states[i] for i in ids},
                                                               "sacct"))
    changed = scheduler.reconcile_dirs(dirs)
    assert changed == dirs[:2]
    first = read_status(dirs[0])
    assert first["state"] == "killed"
    assert first["error"] == "job 5_0: cancelled by scheduler (CANCELLED)"
    assert "CANCELLED AT" in first["error_tail"] and first["log_path"] == str(log)
    assert "TIMEOUT" in read_status(dirs[1])["error"]
    assert read_status(dirs[2])["state"] == "running"
    assert scheduler.live_jobs(dirs) == {dirs[2]: "6"}
    table = status_table("smoke", [{k: c.cfg.to_dict()[k] for k in ("method", "dataset", "ir",
                                                                     "seed")} for c in planned],
                         runs_dir, show_failed=True)
    assert "cancelled by scheduler (CANCELLED)" in table and str(log) in table


def test_no_scheduler_leaves_the_disk_state_alone(runs_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = runs_dir / "g" / "m" / "d_ir1" / "seed0-abcdef12"
    run_dir.mkdir(parents=True)
    update_status(run_dir, state="running", job_ids=["7"])
    monkeypatch.setattr(scheduler, "_run", lambda cmd: None)  # neither sacct nor squeue answers
    assert scheduler.reconcile_dirs([run_dir]) == [] and scheduler.live_jobs([run_dir]) == {}
    assert read_status(run_dir)["state"] == "running"


def test_plan_command_previews_arrays_without_submitting(runs_dir: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    assert main(["plan", "--grid", "smoke", "--executor", "slurm", "--profile", "local",
                 "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "3 cells (0 done, 0 running, 0 pending, 0 failed, 3 missing); 3 to submit" in out
    assert "arrays: 2" in out and out.count("#SBATCH --array=0-1%2") == 1  # k-means: one cell
    assert "#SBATCH --gpus-per-node=1" in out and "#SBATCH --partition=debug" in out
    assert not any(runs_dir.iterdir())  # nothing written, nothing submitted


# -- cells on several ranks ----------------------------------------------------------------------
def _two_rank_cells(runs_dir: Path, tmp_path: Path) -> list:
    grid = _write(tmp_path / "w2.yaml", "name: w2\nbudget: test\nfixed: {world_size: 2}\n"
                  "grid: {method: [simclr], dataset: [synthetic], ir: [10], seed: [0, 1]}\n")
    return plan_cells(str(grid), runs_dir=runs_dir)


def test_ranks_come_from_the_profile_and_a_mismatch_is_refused(runs_dir: Path,
                                                                tmp_path: Path) -> None:
    cfgs = [c.cfg for c in _two_rank_cells(runs_dir, tmp_path)]
    (group,) = group_cells(cfgs, "cpu")  # CPU profile: the cell's world_size sets the tasks
    assert (group.tasks_per_node, group.ranks, len(group.cfgs)) == (2, 2, 2)
    params = sbatch_parameters(group.resources, "j", None, group.tasks_per_node)
    assert (params["nodes"], params["ntasks_per_node"]) == (1, 2)
    with pytest.raises(HarnessError, match=r"simclr synthetic ir=10 seed=0 on SLURM profile "
                       r"local: the profile gives 1 GPU\(s\) x 1 node\(s\) = 1 ranks but the cell "
                       r"has world_size 2; set world_size: 1 in the grid or use a profile with 2"):
        group_cells(cfgs, "local")
    three_nodes = _write(tmp_path / "n3.yaml", "gpus_per_node: 0\nnodes: 3\n")
    with pytest.raises(HarnessError, match="world_size 2 does not split over the profile's 3"):
        group_cells(cfgs, str(three_nodes))
    two_gpus = _write(tmp_path / "g2.yaml", "gpus_per_node: 1\nnodes: 2\n")
    assert [(g.resources.nodes, g.tasks_per_node) for g in group_cells(cfgs, str(two_gpus))] \
        == [(2, 1)]


def test_a_cell_on_several_ranks_is_a_job_of_its_own(runs_dir: Path, tmp_path: Path) -> None:
    claimed, _ = claim(_two_rank_cells(runs_dir, tmp_path), "cached", "slurm")
    mock = MockedSubprocess(known_cmds=["srun", "sbatch"])
    with mock.context():
        jobs = SlurmExecutor(profile="cpu", code=runs_dir / "_code" / "fake",
                             quiet=True).submit(claimed)
    release(claimed)
    assert sorted(j.job_id for j in jobs) == ["12", "13"]  # no array: one job per cell
    sbatch = jobs[0].paths.submission_file.read_text()
    assert "#SBATCH --ntasks-per-node=2" in sbatch and "--array" not in sbatch


def test_imagenet_lt_grid_plans_a_four_gpu_job_per_cell(runs_dir: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    assert main(["plan", "--grid", "imagenet_lt", "--executor", "slurm",
                 "--runs-dir", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert ("jobs 1/1: profile gpu4, 2 cells (nodes=1 tasks/node=4 gpus/node=4 cpus=8 "
            "mem=256GB") in out and "one job per cell, one task per rank" in out
    assert "#SBATCH --ntasks-per-node=4" in out and "#SBATCH --gpus-per-node=4" in out
    assert "#SBATCH --array" not in out
    assert not any(runs_dir.iterdir())
