"""The run store: one self-describing folder per cell, atomic writes, states and modes.

Layout: `<runs>/<grid>/<method>/<dataset>_ir<r>/seed<s>-<uid>/` holding `config.yaml`,
`status.json`, `env.json`, `log.txt`, `ckpt/last.pt`, `metrics.json`, `predictions.npz` and,
while a process owns the cell, `cell.lock` (`harness.cell_lock`). `status.json` on disk is
authoritative; a cell is done only when `metrics.json` and `predictions.npz` (with the sha256
that `metrics.json` records) exist and the status says `completed`.

Every run-store file is read through `read_run_file`, which turns a file that cannot be parsed or
lacks what readers need into `CorruptRunFile`; `inspect_cell` maps that to the retryable state
`corrupt`. Files are written atomically, as standard JSON (NaN and infinities become null), with
the permissions the umask gives (0644 / 0664), so a group can share a run store.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import yaml

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.cell_lock import Owner

State = Literal["missing", "pending", "running", "completed", "failed", "killed", "interrupted",
                "stale", "corrupt"]
Mode = Literal["cached", "retry", "force", "read-only"]
RECORDED_STATES = ("pending", "running", "completed", "failed", "killed", "interrupted")
# stale: staged or running, but its owner is gone; corrupt: a run-store file is damaged
FAILED_STATES = ("failed", "killed", "interrupted", "stale", "corrupt")
RESULT_FILES = ("ckpt", "metrics.json", "predictions.npz", "train_log.jsonl")


class CorruptRunFile(HarnessError):
    """A run-store file that cannot be read or lacks what its readers need."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: {reason}")


def default_runs_dir() -> Path:
    """`HARNESS_RUNS_DIR`, else `./runs`."""
    return Path(os.environ.get("HARNESS_RUNS_DIR", "runs")).resolve()


def now() -> str:
    """Current UTC time, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def current_umask() -> int:
    """The process umask, read from /proc where possible (probing with os.umask briefly sets
    another mask, which a thread creating a file at that moment would get)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder and `os.replace`; the file
    gets mode 0o666 minus the umask (mkstemp alone would leave 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~current_umask())
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


def _standard(obj: Any) -> Any:
    """`obj` with NumPy scalars and arrays as Python values and non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): _standard(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_standard(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _standard(obj.tolist())
    if isinstance(obj, np.generic):
        return _standard(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """Standard JSON (RFC 8259): sorted keys, NaN and infinities written as null."""
    return json.dumps(_standard(obj), indent=indent, sort_keys=True, allow_nan=False, default=str)


def atomic_write_json(path: Path, obj: Any) -> None:
    """Atomic JSON write (sorted keys, indented, standard JSON)."""
    atomic_write_text(path, dumps_json(obj) + "\n")


# -- reading -------------------------------------------------------------------------------------
def _object(path: Path, data: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(data.decode())  # NaN is accepted: stores written before null was used
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptRunFile(path, f"not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise CorruptRunFile(path, f"holds a JSON {type(obj).__name__}, not an object")
    return obj


def _check_status(path: Path, status: dict[str, Any]) -> None:
    if status.get("state") not in RECORDED_STATES:
        raise CorruptRunFile(path, f"state {status.get('state')!r} is not one of "
                                   f"{', '.join(RECORDED_STATES)}")
    if not isinstance(status.get("attempts", 0), int) or not isinstance(
            status.get("job_ids", []), list):
        raise CorruptRunFile(path, "attempts must be a number and job_ids a list")


def _check_metrics(path: Path, metrics: dict[str, Any]) -> None:
    variants = metrics.get("variants")
    if not isinstance(variants, dict) or metrics.get("primary") not in variants:
        raise CorruptRunFile(path, "lacks its variants or the primary variant")
    for key, variant in variants.items():
        values = variant.get("metrics") if isinstance(variant, dict) else None
        if not isinstance(values, dict) or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
                for v in values.values()):
            raise CorruptRunFile(path, f"variant {key!r} has no metrics of numbers")


def _check_lock(path: Path, owner: dict[str, Any]) -> None:
    if not (isinstance(owner.get("host"), str) and isinstance(owner.get("pid"), int)
            and isinstance(owner.get("token"), str)):
        raise CorruptRunFile(path, "lacks its owner (host, pid, token)")


def _records(data: bytes) -> list[dict[str, Any]]:
    """JSON lines; lines that do not parse to an object are skipped (a run killed mid-write
    leaves a partial last line)."""
    records = []
    for line in data.decode(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _config(path: Path, data: bytes) -> dict[str, Any]:
    from harness.config import CellConfig

    try:
        doc = yaml.safe_load(data.decode())
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise CorruptRunFile(path, f"not valid YAML ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise CorruptRunFile(path, "is not a YAML mapping of cell settings")
    try:
        CellConfig.from_dict({k: v for k, v in doc.items() if k != "uid"})
    except TypeError as exc:
        raise CorruptRunFile(path, f"is not a cell config ({exc})") from None
    return doc


def _arrays(path: Path, data: bytes, sha256: str | None) -> dict[str, np.ndarray]:
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise CorruptRunFile(path, "does not match the sha256 that metrics.json records")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except Exception as exc:  # zipfile, zlib and format errors all mean a damaged file
        raise CorruptRunFile(path, f"not a readable .npz ({type(exc).__name__})") from None


def _checkpoint(path: Path, data: bytes, map_location: Any) -> dict[str, Any]:
    import torch

    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as exc:  # unpickling a damaged file can raise nearly anything
        raise CorruptRunFile(path, f"not a readable checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not {"epoch", "model"} <= set(state):
        raise CorruptRunFile(path, "is not a harness checkpoint (no epoch/model)")
    return state


def read_run_file(path: Path, *, sha256: str | None = None, map_location: Any = "cpu") -> Any:
    """Read one run-store file by its name; None when it does not exist.

    `status.json`, `metrics.json`, `env.json`, `cell.lock`: JSON objects, checked for the keys
    their readers use; `train_log.jsonl`: its records; `config.yaml`: a cell config (dict);
    `predictions.npz`: its arrays (`sha256` is checked when given); `*.pt`: a checkpoint
    (`map_location` as torch.load).
    Raises `CorruptRunFile` naming the file and what is wrong with it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise CorruptRunFile(path, f"cannot be read ({exc.strerror})") from None
    if path.suffix == ".npz":
        return _arrays(path, data, sha256)
    if path.suffix == ".pt":
        return _checkpoint(path, data, map_location)
    if path.suffix == ".yaml":
        return _config(path, data)
    if path.suffix == ".jsonl":
        return _records(data)
    obj = _object(path, data)
    check = {"status.json": _check_status, "metrics.json": _check_metrics,
             "cell.lock": _check_lock}.get(path.name)
    if check is not None:
        check(path, obj)
    return obj


def read_status(run_dir: Path) -> dict[str, Any]:
    """The cell's status dict; `{"state": "missing"}` without one, `{"state": "corrupt"}` for a
    damaged one."""
    try:
        status = read_run_file(Path(run_dir) / "status.json")
    except CorruptRunFile:
        return {"state": "corrupt"}
    return status if status is not None else {"state": "missing"}


# -- states --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellView:
    """What the run store says about one cell."""

    state: State
    status: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None  # completed cells only
    problem: str | None = None  # why the cell is stale, corrupt or interrupted
    owner: Owner | None = None  # the live process that owns the cell, if any


def _queued_on_slurm(status: dict[str, Any]) -> bool:
    """Submitted to SLURM and not started: the scheduler, not a lock, says whether it lives."""
    return (status["state"] == "pending" and status.get("executor") == "slurm"
            and bool(status.get("job_ids")))


def inspect_cell(run_dir: Path) -> CellView:
    """The effective state of a cell, with its status, metrics and owner.

    `completed` needs `metrics.json` (else `interrupted`) and a matching `predictions.npz`. A
    `pending` or `running` cell that no live process owns (`cell.lock`) is `stale`, except cells
    queued on SLURM; a damaged file makes the cell `corrupt`. Both are retryable.
    """
    from harness.cell_lock import live_owner

    run_dir = Path(run_dir)
    try:
        status = read_run_file(run_dir / "status.json")
        if status is None:
            return CellView("missing")
        if read_run_file(run_dir / "config.yaml") is None:
            raise CorruptRunFile(run_dir / "config.yaml", "is missing")
        state, owner = status["state"], live_owner(run_dir)
        if state == "completed":
            metrics = read_run_file(run_dir / "metrics.json")
            if metrics is None:
                return CellView("interrupted", status, None, "metrics.json is missing", owner)
            if read_run_file(run_dir / "predictions.npz",
                             sha256=metrics.get("predictions_sha256")) is None:
                raise CorruptRunFile(run_dir / "predictions.npz", "is missing")
            return CellView("completed", status, metrics, None, owner)
    except CorruptRunFile as exc:
        return CellView("corrupt", problem=str(exc))
    if state in ("pending", "running") and owner is None and not _queued_on_slurm(status):
        last = f"host {status.get('host')}, pid {status.get('pid')}" if status.get("pid") else \
            "the run that staged it"
        return CellView("stale", status, None, f"{state}, but its owner ({last}) is gone")
    return CellView(state, status, None, None, owner)


def cell_state(run_dir: Path) -> State:
    """Effective state of a cell (`inspect_cell(run_dir).state`)."""
    return inspect_cell(run_dir).state


def update_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge `fields` into `status.json` atomically and return the new status (a damaged
    status is started afresh)."""
    status = read_status(run_dir)
    if status.get("state") in ("missing", "corrupt"):
        status = {"state": "pending", "attempts": 0, "job_ids": []}
    status.update(fields)
    atomic_write_json(Path(run_dir) / "status.json", status)
    return status


def check_writable(folder: Path, flag: str) -> None:
    """Raise a one-line HarnessError unless files can be created in `folder` (or, when it does
    not exist yet, in its nearest existing parent). Leaves nothing behind."""
    folder = Path(folder).absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise HarnessError(f"{flag} {folder}: {existing} is a file, not a folder; pass {flag} "
                           "with a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".harness-write-test-")
    except OSError as exc:
        raise HarnessError(f"{flag} {folder} cannot be written ({exc.strerror} in {existing}); "
                           f"pass {flag} with a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)


def append_log(run_dir: Path, line: str) -> None:
    """Append one timestamped line to the cell's `log.txt`."""
    with open(Path(run_dir) / "log.txt", "a") as fh:
        fh.write(f"[{now()}] {line}\n")


def needs_run(state: State, mode: Mode) -> bool:
    """Whether a cell in `state` must be (re)submitted under `mode`: `cached` runs missing and
    stale cells, `retry` also failed, killed, interrupted and corrupt ones, `force` all."""
    if mode == "read-only":
        return False
    if mode == "force":
        return True
    if state in ("missing", "stale"):
        return True
    if mode == "retry":
        return state in FAILED_STATES
    return False


def clear_results(run_dir: Path) -> None:
    """Remove a cell's results and checkpoint (a forced rerun, just before it starts)."""
    for name in RESULT_FILES:
        target = Path(run_dir) / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
