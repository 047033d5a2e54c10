"""The per-cell lock: at most one owner per cell, across processes, executors and machines.

The owner of a cell is the process that queues it (`harness run`, role `run`) and then the
worker that trains and evaluates it (role `worker`): host, pid, SLURM job id and a token, in
`<run_dir>/cell.lock`. The holder touches the file every `HEARTBEAT_S` seconds (its mtime is the
heartbeat). A lock is stale when its owner ran on this machine (same host name and boot id) and
that process is gone (pid and start time), or ran elsewhere and its heartbeat is older than
`STALE_AFTER_S`; a stale lock is broken by whoever wants the cell next.

build choice: the lock file is created by hard-linking a fully written temp file to
`cell.lock` and checking the temp file's link count. link(2) is atomic on local filesystems and
on NFS (the count check survives a lost NFS reply), and the file is never seen half written.
fcntl/flock locks were not used: on NFS they depend on the lock daemon, and they vanish with
the process that held them, so they cannot say who owned a cell that died. Breaking a stale lock
renames it to a unique name first: of several processes breaking it, one wins the rename, and a
lock taken over by someone else in between is put back.

A launcher hands its lock to the worker it starts by passing the lock's token (`handover`): the
worker adopts a lock that carries its token instead of waiting for it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from harness.errors import HarnessError
from harness.store import (CorruptRunFile, atomic_write_text, dumps_json, now,
                           read_run_file)

LOCK_NAME = "cell.lock"
HEARTBEAT_S = 30.0  # how often a holder touches its locks
STALE_AFTER_S = 600.0  # an owner on another machine is gone after this long without a heartbeat
Role = Literal["run", "worker"]


def slurm_job_id() -> str | None:
    """This process's SLURM job id (`<array>_<task>` for array tasks), None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (index 0 = state); None without it."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _pid_start(pid: int) -> int | None:
    stat = _proc_stat(pid)
    return int(stat[19]) if stat else None  # field 22: start time in clock ticks after boot


@dataclass(frozen=True)
class Owner:
    """Who owns a cell."""

    host: str
    pid: int
    token: str
    role: Role = "worker"
    job_id: str | None = None
    boot_id: str | None = None
    pid_start: int | None = None
    since: str = ""

    def describe(self) -> str:
        """'queued by `harness run` (host h, pid 12)' or 'run by a worker (host h, pid 12, ...)'."""
        what = "queued by `harness run`" if self.role == "run" else "run by a worker"
        job = f", SLURM job {self.job_id}" if self.job_id else ""
        return f"{what} (host {self.host}, pid {self.pid}{job})"


def this_process(role: Role, token: str | None = None) -> Owner:
    """An owner record for the calling process."""
    return Owner(host=socket.gethostname(), pid=os.getpid(), token=token or uuid.uuid4().hex,
                 role=role, job_id=slurm_job_id(), boot_id=_boot_id(),
                 pid_start=_pid_start(os.getpid()), since=now())


def _pid_alive(pid: int, start: int | None) -> bool:
    """Whether a local process runs: a zombie, or a new process that reused the pid, is gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:  # no procfs: trust the signal check
        return True
    return stat[0] not in ("Z", "X") and (start is None or int(stat[19]) == start)


def owner_alive(owner: Owner, heartbeat: float) -> bool:
    """Whether `owner` still runs: by its process on this machine, else by its heartbeat."""
    same_machine = owner.host == socket.gethostname() and (
        owner.boot_id is None or owner.boot_id == _boot_id())
    if same_machine:
        return _pid_alive(owner.pid, owner.pid_start)
    return time.time() - heartbeat < STALE_AFTER_S


def _read(path: Path) -> tuple[Owner | None, float] | None:
    """The lock's owner (None when the file is damaged) and heartbeat; None without a lock."""
    try:
        doc = read_run_file(path)
        if doc is None:
            return None
        known = {f.name for f in fields(Owner)}
        return Owner(**{k: v for k, v in doc.items() if k in known}), path.stat().st_mtime
    except FileNotFoundError:  # released between the read and the stat
        return None
    except (CorruptRunFile, TypeError):
        try:
            return None, path.stat().st_mtime
        except FileNotFoundError:
            return None


def live_owner(run_dir: Path) -> Owner | None:
    """The live owner of a cell; None when it has none or only a stale lock."""
    found = _read(Path(run_dir) / LOCK_NAME)
    if found is None or found[0] is None:
        return None
    owner, heartbeat = found
    return owner if owner_alive(owner, heartbeat) else None


class CellBusy(HarnessError):
    """The cell is owned by another live process."""

    def __init__(self, run_dir: Path, owner: Owner | None) -> None:
        self.owner = owner
        who = owner.describe() if owner else "taken by another process"
        super().__init__(f"cell {run_dir} is {who}")


def _create(path: Path, owner: Owner) -> bool:
    """Create the lock file holding `owner`, atomically; False when it exists."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(dumps_json(asdict(owner)) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError as exc:  # NFS can report an error for a link it made: the count says
            if not path.exists():
                raise HarnessError(
                    f"cannot create the cell lock {path} ({exc.strerror}): the run store needs a "
                    "filesystem with hard links (local or NFS); choose another --runs-dir"
                ) from None
        return os.stat(tmp).st_nlink == 2
    finally:
        tmp.unlink(missing_ok=True)


def _remove_if(path: Path, owner: Owner | None) -> None:
    """Remove the lock if it still holds `owner` (None: a damaged lock)."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex}.gone")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    try:
        found = _read(aside)
        if (found[0] if found else None) != owner:  # someone took the cell meanwhile: give it back
            try:
                os.link(aside, path)
            except OSError:
                pass  # yet another lock exists: its holder sees that it lost the cell
    finally:
        aside.unlink(missing_ok=True)


class _Keeper:
    """Touches every lock this process holds, every HEARTBEAT_S seconds, from a daemon thread."""

    def __init__(self) -> None:
        self._held: dict[Path, str] = {}
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None

    def hold(self, path: Path, token: str) -> None:
        with self._mutex:
            self._held[path] = token
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="cell-lock-heartbeat",
                                                daemon=True)
                self._thread.start()

    def drop(self, path: Path) -> None:
        with self._mutex:
            self._held.pop(path, None)

    def beat(self) -> None:
        """Touch every held lock that still carries this process's token."""
        with self._mutex:
            held = list(self._held.items())
        for path, token in held:
            found = _read(path)
            if found and found[0] and found[0].token == token:
                try:
                    os.utime(path)
                except OSError:
                    pass  # released meanwhile

    def _loop(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            self.beat()


keeper = _Keeper()


class CellLock:
    """A held cell lock."""

    def __init__(self, path: Path, owner: Owner) -> None:
        self.path, self.owner = path, owner

    @property
    def token(self) -> str:
        return self.owner.token

    def held(self) -> bool:
        """Whether the lock file still names this process (with this token)."""
        found = _read(self.path)
        return bool(found and found[0] and found[0].token == self.token
                    and found[0].pid == os.getpid())

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it still names this owner (a worker that
        adopted it owns it now, and releases it itself)."""
        keeper.drop(self.path)
        _remove_if(self.path, self.owner)


def acquire(run_dir: Path, role: Role, handover: str | None = None) -> CellLock:
    """Take the cell's lock, breaking a stale one; `handover`: adopt a lock with this token.

    Raises `CellBusy` naming the owner when a live process holds the cell.
    """
    path = Path(run_dir) / LOCK_NAME
    me = this_process(role, handover)
    for _ in range(5):
        if _create(path, me):
            break
        found = _read(path)
        if found is None:
            continue  # released meanwhile
        owner, heartbeat = found
        if owner is not None and handover is not None and owner.token == handover:
            atomic_write_text(path, dumps_json(asdict(me)) + "\n")  # adopt
            break
        if owner is not None and owner_alive(owner, heartbeat):
            raise CellBusy(path.parent, owner)
        _remove_if(path, owner)
    else:
        raise CellBusy(path.parent, live_owner(path.parent))
    keeper.hold(path, me.token)
    return CellLock(path, me)
