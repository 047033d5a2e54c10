"""Provenance of a run: versions, git SHA and dirty state, device, SLURM ids (`env.json`)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "submitit")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_info(root: Path) -> dict[str, Any]:
    """SHA of HEAD, whether the tree is dirty, and a hash of the diff."""
    frozen = Path(root) / "code_copy.json"  # a SLURM code copy (harness.codecopy): no .git
    if frozen.is_file():
        info = json.loads(frozen.read_text())
        return {k: info.get(k) for k in ("git_sha", "dirty", "diff_sha256")}
    sha = os.environ.get("HARNESS_GIT_SHA") or _git(root, "rev-parse", "HEAD")
    diff = _git(root, "diff", "HEAD") or ""
    return {"git_sha": sha, "dirty": bool(diff),
            "diff_sha256": hashlib.sha256(diff.encode()).hexdigest() if diff else None}


def device_info() -> dict[str, Any]:
    """CUDA availability and GPU name, cudnn flags, CPU threads.

    The thread count matters for CPU runs: float reductions split over another number of threads
    round differently, and a short training run can end far apart (digits demo cell, IR 10 seed 0:
    ACC 59.9 with 1 thread, 50.3 with 2).
    """
    import torch

    info: dict[str, Any] = {"cuda": torch.cuda.is_available(),
                            "cpu_threads": torch.get_num_threads(),
                            "cudnn_benchmark": torch.backends.cudnn.benchmark,
                            "cudnn_deterministic": torch.backends.cudnn.deterministic}
    if info["cuda"]:
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda_version"] = torch.version.cuda
    return info


def environment(plugin_root: Path) -> dict[str, Any]:
    """Everything `env.json` records."""
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    slurm = {k: v for k, v in os.environ.items()
             if k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID",
                      "SLURM_JOB_NODELIST", "SLURM_RESTART_COUNT", "CUDA_VISIBLE_DEVICES")}
    return {"python": sys.version.split()[0], "platform": platform.platform(),
            "host": socket.gethostname(), "versions": versions, **git_info(plugin_root),
            "device": device_info(), "slurm": slurm}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (plugin files, for stale-run detection)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
