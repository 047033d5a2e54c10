"""What the SLURM scheduler says about the jobs of a grid, and reconciling `status.json` with it.

`status.json` on disk is authoritative; the scheduler is a hint used for two things only: a cell
recorded as pending/running whose job has ended without recording a result becomes `killed`
(with the scheduler's reason and the job log), and a cell whose job is still queued or running is
never submitted twice.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from submitit.slurm.slurm import read_job_id

from harness.cell_lock import live_owner
from harness.store import now, read_status, update_status

# Scheduler states of a job that may still run the cell (squeue/sacct spelling).
ALIVE = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING",
                   "SUSPENDED", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT",
                   "STOPPED", "SPECIAL_EXIT"})
GONE = "GONE"  # not in the queue any more (squeue fallback without accounting)
REASONS = {
    "CANCELLED": "cancelled by scheduler (CANCELLED)",
    "TIMEOUT": "time limit reached and not requeued (TIMEOUT); raise timeout_min or "
               "max_num_timeout in the SLURM profile",
    "OUT_OF_MEMORY": "out of memory (OUT_OF_MEMORY); raise mem_gb in the SLURM profile",
    "NODE_FAIL": "node failure (NODE_FAIL)",
    "PREEMPTED": "preempted and not requeued (PREEMPTED)",
    "BOOT_FAIL": "node boot failure (BOOT_FAIL)",
    "DEADLINE": "deadline reached (DEADLINE)",
    "FAILED": "job failed before the worker recorded a result (FAILED)",
    "COMPLETED": "job ended without recording a result (COMPLETED)",
    GONE: "job left the queue without recording a result",
}


def _run(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def parse_sacct(text: str) -> dict[str, str]:
    """`sacct --parsable2 -o JobID,State` output -> {job id: state}; expands pending array
    ranges (`12_[0-3%2]`) and drops job steps and "by <uid>" suffixes."""
    states: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        job, _, state = line.partition("|")
        if not job or "." in job or not state:
            continue
        state = state.split()[0]
        for parts in read_job_id(job):
            states["_".join(parts[:2])] = state
            if len(parts) >= 3:
                for i in range(int(parts[1]), int(parts[2]) + 1):
                    states[f"{parts[0]}_{i}"] = state
    return states


def job_states(job_ids: Iterable[str]) -> tuple[dict[str, str], str] | None:
    """Scheduler state per job id and its source (`sacct`, else `squeue`); None when neither
    answers. Without accounting, a job squeue no longer lists is `GONE`."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}, "none"
    bases = sorted({j.split("_")[0] for j in ids})
    out = _run(["sacct", "-X", "--parsable2", "-o", "JobID,State", "-j", ",".join(bases)])
    if out is not None:
        return parse_sacct(out), "sacct"
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T"])
    if out is None:
        return None
    listed = parse_sacct("JobID|State\n" + out)
    return {j: listed.get(j, GONE) for j in ids}, "squeue"


def last_job(status: dict[str, Any]) -> str | None:
    """The cell's most recent job id."""
    ids = status.get("job_ids") or []
    return str(ids[-1]) if ids else None


def live_jobs(run_dirs: Iterable[Path]) -> dict[Path, str]:
    """Run folders whose last job is queued or running, with that job id."""
    jobs = {Path(d): last_job(read_status(d)) for d in run_dirs}
    jobs = {d: j for d, j in jobs.items() if j}
    answer = job_states(jobs.values())
    if answer is None:
        return {}
    states, _ = answer
    return {d: j for d, j in jobs.items() if states.get(j) in ALIVE}


def _tail(path: str | None, lines: int = 12) -> str:
    try:
        text = Path(path).read_text(errors="replace") if path else ""
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


def reconcile_dirs(run_dirs: Iterable[Path], verbose: bool = False) -> list[Path]:
    """Mark pending/running cells whose job has ended without a result as `killed` (unless a
    live process owns the cell: then its job was a duplicate that found the cell taken)."""
    candidates = {}
    for run_dir in run_dirs:
        status = read_status(run_dir)
        if status.get("state") in ("pending", "running") and last_job(status):
            candidates[Path(run_dir)] = str(last_job(status))
    if not candidates:
        return []
    answer = job_states(candidates.values())
    if answer is None:
        if verbose:
            print("harness: no SLURM scheduler answered (sacct, squeue); status from disk only",
                  file=sys.stderr)
        return []
    states, _ = answer
    changed = []
    for run_dir, job in candidates.items():
        state = states.get(job)
        if state is None or state in ALIVE:
            continue
        current = read_status(run_dir)  # re-read: the job may have finished meanwhile
        if current.get("state") not in ("pending", "running") or last_job(current) != job:
            continue
        if live_owner(run_dir) is not None:  # another process (e.g. a local run) owns the cell
            continue
        log = current.get("scheduler_log")
        update_status(run_dir, state="killed", ended=now(), scheduler_state=state,
                      error=f"job {job}: {REASONS.get(state, f'job ended ({state})')}",
                      error_tail=_tail(log), log_path=log or str(run_dir / "log.txt"))
        changed.append(run_dir)
        print(f"harness: {run_dir}: job {job} {state} -> killed", file=sys.stderr)
    return changed


def grid_run_dirs(runs_dir: Path, grid_name: str) -> list[Path]:
    """Every run folder of a grid (those with a status.json)."""
    root = Path(runs_dir) / grid_name
    return sorted(p.parent for p in root.glob("*/*/*/status.json")) if root.is_dir() else []

