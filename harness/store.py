"""The run store: one self-describing folder per cell, atomic writes, states and modes.

Layout: `<runs>/<grid>/<method>/<dataset>_ir<r>/seed<s>-<uid>/` holding `config.yaml`,
`status.json`, `env.json`, `log.txt`, `ckpt/last.pt`, `metrics.json`, `predictions.npz`.
`status.json` on disk is authoritative; a cell is done only when `metrics.json` exists and the
status says `completed`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Literal

State = Literal["missing", "pending", "running", "completed", "failed", "killed", "interrupted"]
Mode = Literal["cached", "retry", "force", "read-only"]
FAILED_STATES = ("failed", "killed", "interrupted")


def default_runs_dir() -> Path:
    """`HARNESS_RUNS_DIR`, else `./runs`."""
    return Path(os.environ.get("HARNESS_RUNS_DIR", "runs")).resolve()


def now() -> str:
    """Current UTC time, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and `os.replace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Atomic text write."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (sorted keys, indented)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    """Read a JSON file; None if absent or unreadable (e.g. a crash mid-write of a foreign tool)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def read_status(run_dir: Path) -> dict[str, Any]:
    """The cell's status dict; `{"state": "missing"}` when the folder has none."""
    status = read_json(Path(run_dir) / "status.json")
    return status if status is not None else {"state": "missing"}


def _pid_alive(pid: int) -> bool:
    """Whether a local process runs (a zombie left unreaped by a container's init counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:  # no procfs: trust the signal check
        return True


def cell_state(run_dir: Path) -> State:
    """Effective state of a cell.

    `completed` needs `metrics.json` too; a `running` cell whose local process (same host) is
    gone counts as `killed`, so `--mode retry` resumes it from its checkpoint.
    """
    status = read_status(run_dir)
    state = status.get("state", "missing")
    if state == "completed" and not (Path(run_dir) / "metrics.json").exists():
        return "interrupted"
    if (state == "running" and status.get("pid") and status.get("host") == socket.gethostname()
            and not status.get("job_ids") and not _pid_alive(int(status["pid"]))):
        return "killed"
    return state


def update_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into `status.json` atomically and return the new status."""
    status = read_status(run_dir)
    if status.get("state") == "missing":
        status = {"state": "pending", "attempts": 0, "job_ids": []}
    status.update(fields)
    atomic_write_json(Path(run_dir) / "status.json", status)
    return status


def append_log(run_dir: Path, line: str) -> None:
    """Append one timestamped line to the cell's `log.txt`."""
    with open(Path(run_dir) / "log.txt", "a") as fh:
        fh.write(f"[{now()}] {line}\n")


def needs_run(state: State, mode: Mode) -> bool:
    """Whether a cell in `state` must be (re)submitted under `mode`."""
    if mode == "read-only":
        return False
    if mode == "force":
        return True
    if state == "missing":
        return True
    if mode == "retry":
        return state in FAILED_STATES
    return False
