"""Executors: `debug` (in-process), `local` (one process per cell), `slurm` (submitit arrays)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

from harness.errors import UnknownNameError

EXECUTORS = ("debug", "local", "slurm")


def choose_executor() -> tuple[str, str]:
    """What `--executor auto` means here, and why: `slurm` where sbatch is installed and the
    SLURM controller answers (`sinfo`), else `local` (as submitit's AutoExecutor decides)."""
    if shutil.which("sbatch") is None:
        return "local", "no sbatch on PATH, so no SLURM cluster"
    try:
        proc = subprocess.run(["sinfo", "--noheader", "--format=%P"], capture_output=True,
                              text=True, timeout=15)
    except (OSError, subprocess.SubprocessError) as exc:
        return "local", f"sbatch is installed but sinfo could not ask the controller ({exc})"
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
        return "local", f"sbatch is installed but the SLURM controller does not answer ({why})"
    partitions = ", ".join(p.rstrip("*") for p in proc.stdout.split()) or "none listed"
    return "slurm", (f"sbatch is installed and the SLURM controller answers (partitions: "
                     f"{partitions})")


def get_executor(name: str, **options: Any) -> Any:
    """Instantiate an executor by name."""
    if name == "debug":
        from harness.executors.debug import DebugExecutor

        return DebugExecutor(**options)
    if name == "local":
        from harness.executors.local import LocalExecutor

        return LocalExecutor(**options)
    if name == "slurm":
        from harness.executors.slurm import SlurmExecutor

        return SlurmExecutor(**options)
    raise UnknownNameError("executor", name, EXECUTORS)
