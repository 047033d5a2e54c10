"""SLURM executor: the missing cells of a grid as submitit job arrays, one per resource group.

Cells are grouped by their resolved profile settings (`harness.profiles`); each group gets one
`submitit.AutoExecutor(cluster="slurm")` and one `executor.batch()`, i.e. one job array throttled
by `array_parallelism`. A cell on several ranks (`world_size` > 1) is a job of its own with
`nodes` x `tasks_per_node` tasks, one per rank; each task finds its rank and the rendezvous
through `submitit.helpers.TorchDistributedEnvironment` (`harness.distributed`). Jobs carry
`RunCell(plain config dict)` only and run a frozen copy of the code (`harness.codecopy`).
Submission returns at once: the job ids go into each cell's `status.json` and the pickled
submitit job into `job.pkl`, so `harness status` works from any shell. A time-out or preemption
requeues the job (RunCell is checkpointable), up to `max_num_timeout` times; it resumes from
`ckpt/last.pt`.
"""

from __future__ import annotations

import pickle
import shlex
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import codecopy
from harness.config import CellConfig, write_config
from harness.errors import HarnessError
from harness.executors.progress import cell_label
from harness.executors.scheduler import grid_run_dirs, reconcile_dirs
from harness.profiles import (Profile, Resources, load_profile, profile_name_for, sbatch_flag,
                              tasks_per_node)
from harness.registry import method_class
from harness.store import atomic_write_bytes, now, read_status, update_status

if TYPE_CHECKING:
    from harness.runner import ClaimedCell

SUBMITIT_DIR = "_submitit"
PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the checkout that `freeze` copies


@dataclass
class ArrayGroup:
    """Cells that share one profile, one resolved resource set and one rank layout: one job array,
    or one job per cell where each cell runs on several ranks."""

    profile: str
    resources: Resources
    cfgs: list[CellConfig] = field(default_factory=list)
    tasks_per_node: int = 1  # SLURM tasks (ranks) per node of each cell

    @property
    def ranks(self) -> int:
        """Ranks (SLURM tasks) of each cell: `nodes` x `tasks_per_node`."""
        return self.resources.nodes * self.tasks_per_node

    def summary(self) -> str:
        """One line: nodes and tasks per cell, then GPUs per node and the other settings."""
        return (f"nodes={self.resources.nodes} tasks/node={self.tasks_per_node} "
                f"{self.resources.summary()}")


def runs_root(cfg: CellConfig) -> Path:
    """The run store of a cell (`<runs>/<grid>/<method>/<dataset>_ir<r>/<seed-uid>`)."""
    return Path(cfg.run_dir).parents[3]


def submitit_folder(runs_dir: Path, grid: str) -> Path:
    """submitit's folder for a grid; `%j` becomes `<array>_<task>` per job."""
    return Path(runs_dir) / SUBMITIT_DIR / grid / "%j"


def group_cells(cfgs: Sequence[CellConfig], profile: str | None = None) -> list[ArrayGroup]:
    """Group cells by profile, resolved settings and ranks (`--profile` for all, else the grid's
    `profile` for the cell, else the method's); a profile whose ranks do not fit a cell's
    `world_size` is refused."""
    loaded: dict[str, Profile] = {}
    groups: dict[tuple[str, Resources, int], ArrayGroup] = {}
    for cfg in cfgs:
        resources = getattr(method_class(cfg.method), "resources", "gpu1")
        name = profile or cfg.profile or profile_name_for(resources)
        prof = loaded.get(name) or loaded.setdefault(name, load_profile(name))
        res = prof.resolve(cfg.method, cfg.dataset, cfg.ir, resources)
        try:
            tasks = tasks_per_node(res, cfg.world_size)
        except HarnessError as exc:
            raise HarnessError(f"{cell_label(cfg)} on SLURM profile {prof.name}: {exc}") from None
        key = (prof.name, res, tasks)
        groups.setdefault(key, ArrayGroup(prof.name, res, tasks_per_node=tasks)).cfgs.append(cfg)
    return list(groups.values())


def _mem(mem_gb: float) -> str:
    # the spelling submitit's AutoExecutor gives `mem_gb`, so that preview and submission agree
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{int(mem_gb * 1024)}MB"


def sbatch_parameters(res: Resources, job_name: str, code: Path | None,
                      tasks_per_node: int = 1) -> dict[str, Any]:
    """submitit SLURM parameters (sbatch names) of one group; `None`s are left out."""
    setup = list(res.setup) + (codecopy.setup_lines(code, res.cpus_per_task) if code else [])
    params: dict[str, Any] = {
        "job_name": job_name, "partition": res.partition, "account": res.account,
        "qos": res.qos, "constraint": res.constraint, "time": res.timeout_min,
        "nodes": res.nodes, "ntasks_per_node": tasks_per_node if tasks_per_node > 1 else None,
        "cpus_per_task": res.cpus_per_task, "mem": _mem(res.mem_gb),
        "gpus_per_node": res.gpus_per_node or None, "array_parallelism": res.array_parallelism,
        "signal_delay_s": res.signal_delay_s, "setup": setup,
        "additional_parameters": dict(sbatch_flag(line) for line in res.sbatch_extra) or None}
    return {k: v for k, v in params.items() if v is not None}


def python_command() -> str:
    """The interpreter the jobs run: this one (the project's virtual environment)."""
    return shlex.quote(sys.executable)


def sbatch_preview(group: ArrayGroup, folder: Path, job_name: str, code: Path | None) -> str:
    """The sbatch file submitit writes for this group (the same function submitit calls)."""
    # Build choice: submitit's own (private) renderer, so the preview cannot drift from what
    # is submitted; the golden test in tests/test_slurm_plan.py pins its output.
    from submitit.slurm.slurm import _make_sbatch_string

    command = f"{python_command()} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    n = len(group.cfgs)
    return _make_sbatch_string(command=command, folder=folder,
                               map_count=n if n > 1 and group.ranks == 1 else None,
                               **sbatch_parameters(group.resources, job_name, code,
                                                   group.tasks_per_node))


def check_sbatch() -> None:
    """Raise a clear error where no SLURM client is installed."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise HarnessError("sbatch/srun not found: --executor slurm needs a SLURM cluster; use "
                           "--executor local here, or start the local test cluster with "
                           "`bash ../shared/slurm/local_cluster.sh start`")


class SlurmExecutor:
    """Submit cells as job arrays and return without waiting."""

    def __init__(self, profile: str | None = None, code: Path | None = None,
                 allow_dirty: bool = False, quiet: bool = False, **_: object) -> None:
        self.profile, self.code, self.allow_dirty, self.quiet = profile, code, allow_dirty, quiet

    def make_executor(self, group: ArrayGroup, folder: Path, job_name: str) -> Any:
        """A submitit AutoExecutor for one group (cluster named explicitly, never detected)."""
        import submitit

        check_sbatch()
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                   slurm_max_num_timeout=group.resources.max_num_timeout,
                                   slurm_python=python_command())
        params = sbatch_parameters(group.resources, job_name, self.code, group.tasks_per_node)
        ex.update_parameters(**{f"slurm_{k}": v for k, v in params.items()})
        return ex

    def submit(self, cells: Sequence[ClaimedCell]) -> list[Any]:
        """Submit claimed cells (one array per group); records job ids and `job.pkl` per cell.

        Each job carries its cell's lock token, so its worker adopts the lock if this process
        still holds it when the job starts."""
        from harness.worker import RunCell

        if not cells:
            return []
        check_sbatch()
        if self.code is None:
            self.code, _ = codecopy.freeze(PROJECT_ROOT, runs_root(cells[0].cfg),
                                           self.allow_dirty)
        cfgs = [c.cfg.with_location(plugin_root=str(self.code)) for c in cells]
        by_dir = {c.cfg.run_dir: c for c in cells}
        all_jobs = []
        for group in group_cells(cfgs, self.profile):
            grid = group.cfgs[0].grid
            folder = submitit_folder(runs_root(group.cfgs[0]), grid)
            ex = self.make_executor(group, folder, f"harness-{grid}-{group.profile}")
            for cfg in group.cfgs:
                write_config(cfg, Path(cfg.run_dir) / "config.yaml")
            calls = [RunCell(cfg.to_dict(), by_dir[cfg.run_dir].fresh,
                             by_dir[cfg.run_dir].lock.token) for cfg in group.cfgs]
            try:
                if group.ranks > 1:  # one job per cell: its tasks are the cell's ranks
                    jobs = [ex.submit(call) for call in calls]
                else:
                    with ex.batch():
                        jobs = [ex.submit(call) for call in calls]
            except Exception as exc:  # sbatch refused: say so in every cell of the array
                message = f"submission failed: {str(exc).strip().splitlines()[-1]}"
                for cfg in group.cfgs:
                    update_status(Path(cfg.run_dir), state="failed", ended=now(), error=message)
                raise HarnessError(f"sbatch refused the {group.profile} array "
                                   f"({group.summary()}): {exc}") from None
            for cfg, job in zip(group.cfgs, jobs):
                self._record(cfg, job, group.profile)
            all_jobs += jobs
            if not self.quiet:
                print(f"{_kind(jobs, group)}: {len(jobs)} cell{'s' * (len(jobs) > 1)}, profile "
                      f"{group.profile} ({group.summary()})", flush=True)
        return all_jobs

    def _record(self, cfg: CellConfig, job: Any, profile: str) -> None:
        run_dir = Path(cfg.run_dir)
        atomic_write_bytes(run_dir / "job.pkl", pickle.dumps(job))
        ids = [i for i in read_status(run_dir).get("job_ids", []) if i != job.job_id]
        update_status(run_dir, job_ids=ids + [job.job_id], submitted=now(), executor="slurm",
                      profile=profile, code_dir=str(self.code),
                      scheduler_log=str(job.paths.stderr))


def _kind(jobs: list[Any], group: ArrayGroup) -> str:
    """`array 12`, `job 13`, or `jobs 14, 15` (a job per cell on several ranks)."""
    if group.ranks > 1:
        return f"job{'s' * (len(jobs) > 1)} " + ", ".join(j.job_id for j in jobs)
    return f"{'array' if len(jobs) > 1 else 'job'} {jobs[0].job_id.split('_')[0]}"


def reconcile(grid_name: str, runs_dir: Path, verbose: bool = True) -> None:
    """Mark a grid's pending/running cells whose SLURM job ended without a result as `killed`
    (error: the scheduler's reason, e.g. "cancelled by scheduler (CANCELLED)")."""
    from harness.grids import load_grid

    reconcile_dirs(grid_run_dirs(Path(runs_dir), load_grid(grid_name).name), verbose=verbose)

