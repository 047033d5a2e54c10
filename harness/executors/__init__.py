"""Executors: `debug` (in-process), `local` (one process per cell), `slurm` (submitit arrays)."""

from __future__ import annotations

from typing import Any

from harness.errors import UnknownNameError

EXECUTORS = ("debug", "local", "slurm")


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
