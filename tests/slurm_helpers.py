"""Helpers of the SLURM end-to-end tests (tests/test_slurm.py, tests/test_slurm_ddp.py); the
`cluster` fixture they share is in conftest.py."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.cli import main as harness


def cli(*args: str) -> tuple[int, str]:
    """Run `harness ARGS` in this process; returns the exit code and stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = harness(list(args))
    return code, out.getvalue()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` every second until it is truthy (returned) or `timeout` s pass."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        value = predicate()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_dirs(runs: Path, grid: str) -> list[Path]:
    """The staged run folders of `grid` under the run store `runs`."""
    return sorted(p.parent for p in (runs / grid).glob("*/*/*/config.yaml"))


def grid_file(path: Path, name: str, body: str) -> Path:
    """A test-budget grid file with a cheap evaluation protocol and `body` appended."""
    path.write_text(f"name: {name}\nbudget: test\nfixed:\n  eval_seeds: first2\n"
                    f"  protocol: {{n_init: 2, max_iter: 50}}\n{body}")
    return path
