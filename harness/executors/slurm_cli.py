"""`harness run --executor slurm` and `harness plan`: decide, preview and submit a grid's cells."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import codecopy
from harness.errors import HarnessError
from harness.estimate import estimate_lines
from harness.executors.progress import cell_label, count_cells
from harness.executors.scheduler import grid_run_dirs, live_jobs, reconcile_dirs
from harness.executors.slurm import (PROJECT_ROOT, SlurmExecutor, check_sbatch, group_cells,
                                     sbatch_preview, submitit_folder)
from harness.grids import load_grid
from harness.runner import PlannedCell, check_data, claim, link_reused, plan_cells, release
from harness.store import FAILED_STATES, check_writable


@dataclass
class Decision:
    """The selected cells of a grid and what a submission would do with them."""

    grid: str
    runs_dir: Path
    cells: list[PlannedCell]
    todo: list[PlannedCell]
    live: int  # cells skipped because their job is still queued or running


def decide(args: Any) -> Decision:
    """Plan the selected cells under `args.mode`; never resubmit a cell whose job is alive.

    A cell left `pending` without a job id (staged, then the submission died) is stale: it runs.
    """
    runs_dir = Path(args.runs_dir).resolve()
    cells = plan_cells(args.grid, only=args.only, seeds=args.seeds, mode=args.mode,
                       runs_dir=runs_dir, data_root=args.root, device=args.device)
    wanted = [c for c in cells if c.run]
    alive = live_jobs(Path(c.cfg.run_dir) for c in wanted)
    todo = [c for c in wanted if Path(c.cfg.run_dir) not in alive]
    return Decision(load_grid(args.grid).name, runs_dir, cells, todo, len(wanted) - len(todo))


def _counts(cells: list[PlannedCell]) -> str:
    n = Counter("done" if c.state == "completed" else "failed" if c.state in FAILED_STATES
                else c.state for c in cells)
    return ", ".join(f"{n.get(k, 0)} {k}" for k in ("done", "running", "pending", "failed",
                                                    "missing"))


def _header(d: Decision, mode: str) -> str:
    live = f", {d.live} with a job still queued or running" if d.live else ""
    return (f"grid {d.grid}: {count_cells(len(d.cells))} ({_counts(d.cells)}); "
            f"{len(d.todo)} to submit{live} (mode {mode}; runs in {d.runs_dir / d.grid})")


def _per(todo: list[PlannedCell], key: str) -> str:
    n = Counter(getattr(c.cfg, key) for c in todo)
    return ", ".join(f"{k} {v}" for k, v in n.items()) or "none"


def summary_lines(d: Decision, args: Any) -> list[str]:
    """`plan --summary`: counts per method and dataset, the total estimate and the arrays."""
    lines = [_header(d, args.mode), f"  to submit per method: {_per(d.todo, 'method')}",
             f"  to submit per dataset: {_per(d.todo, 'dataset')}",
             estimate_lines([c.cfg for c in d.todo], d.runs_dir)[-1:][0].strip()
             if d.todo else "  nothing to submit"]
    if d.todo and getattr(args, "executor", "slurm") == "slurm":
        groups = group_cells([c.cfg for c in d.todo], args.profile)
        lines.append(f"  arrays: {len(groups)} (" + ", ".join(
            f"{g.profile}: {count_cells(len(g.cfgs))} on {g.ranks} rank(s)" for g in groups) +
            "); drop --summary for the "
            "cells and the sbatch preview")
    return [lines[0]] + [line if line.startswith("  ") else f"  {line}" for line in lines[1:]]


def plan_slurm(args: Any) -> str:
    """What `harness run` would submit: counts, arrays and each array's sbatch file (or, with
    `args.summary`, a few lines)."""
    d = decide(args)
    if getattr(args, "summary", False):
        return "\n".join(summary_lines(d, args)) + "\n"
    lines = [_header(d, args.mode), *estimate_lines([c.cfg for c in d.todo], d.runs_dir)]
    if getattr(args, "executor", "slurm") != "slurm":
        return "\n".join(lines + [f"  {cell_label(c.cfg)}" for c in d.todo]) + "\n"
    try:
        state = codecopy.code_state(PROJECT_ROOT)
        code = codecopy.code_dir(d.runs_dir, state)
        note = ("dirty: needs --allow-dirty; the diff would be stored" if state.dirty
                and not args.allow_dirty else "dirty, diff stored" if state.dirty else "clean")
        lines.append(f"code: commit {state.git_sha[:12]} ({note}) -> {code}")
    except HarnessError as exc:
        code = d.runs_dir / "_code" / "UNKNOWN"
        lines.append(f"code: cannot freeze: {exc}")
    groups = group_cells([c.cfg for c in d.todo], args.profile)
    lines.append(f"arrays: {len(groups)}")
    folder = submitit_folder(d.runs_dir, d.grid)
    for i, g in enumerate(groups, 1):
        kind, how = (("jobs", "one job per cell, one task per rank") if g.ranks > 1
                     else ("array", f"{g.resources.array_parallelism} at once"))
        lines += ["", f"{kind} {i}/{len(groups)}: profile {g.profile}, {count_cells(len(g.cfgs))} "
                      f"({g.summary()}, {how})"]
        lines += [f"  {cell_label(c)}" for c in g.cfgs]
        lines += ["  sbatch preview:", *(f"    {line}" for line in sbatch_preview(
            g, folder, f"harness-{d.grid}-{g.profile}", code).splitlines())]
    return "\n".join(lines) + "\n"


def run_slurm(args: Any) -> int:
    """Reconcile with the scheduler, then submit the cells the mode selects; never waits."""
    if args.dry_run:
        print(plan_slurm(args), end="")
        return 0
    check_sbatch()
    runs_dir = Path(args.runs_dir).resolve()
    check_writable(runs_dir, "--runs-dir")
    reconcile_dirs(grid_run_dirs(runs_dir, load_grid(args.grid).name))
    d = decide(args)
    print(_header(d, args.mode), flush=True)
    for cell in d.cells:
        if cell.reuse is not None:
            link_reused(cell)
    if not d.todo:
        return 0
    group_cells([c.cfg for c in d.todo], args.profile)  # bad profiles fail before any write
    check_data(d.todo)  # missing dataset files fail before any job is queued
    code, state = codecopy.freeze(PROJECT_ROOT, runs_dir, args.allow_dirty)
    print(f"code: {code}" + (" (dirty tree: diff in code_copy.diff)" if state.dirty else ""),
          flush=True)
    claimed, busy = claim([PlannedCell(c.cfg.with_location(plugin_root=str(code)), c.state, True)
                           for c in d.todo], args.mode, "slurm")
    for cell in busy:
        print(cell.line(), flush=True)
    try:
        jobs = SlurmExecutor(profile=args.profile, code=code).submit(claimed)
    finally:
        release(claimed)
    print(f"submitted {count_cells(len(jobs))}; follow them with: harness status --grid {args.grid} "
          f"--runs-dir {runs_dir}", flush=True)
    return 0
