"""The per-cell lock: one owner, stale owners detected by process or heartbeat, safe to break."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import cell_lock
from harness.cell_lock import LOCK_NAME, CellBusy, acquire, live_owner, this_process
from harness.store import atomic_write_json


def _write_lock(run_dir: Path, **fields: object) -> Path:
    owner = dataclasses.replace(this_process("worker"), **fields)
    atomic_write_json(run_dir / LOCK_NAME, dataclasses.asdict(owner))
    return run_dir / LOCK_NAME


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_one_owner_at_a_time_and_release_frees_the_cell(tmp_path: Path) -> None:
    lock = acquire(tmp_path, "run")
    assert live_owner(tmp_path) == lock.owner and lock.held()
    with pytest.raises(CellBusy, match=rf"queued by `harness run` \(host .*, pid {os.getpid()}\)"):
        acquire(tmp_path, "worker")
    lock.release()
    assert live_owner(tmp_path) is None and not (tmp_path / LOCK_NAME).exists()
    again = acquire(tmp_path, "worker")
    assert again.token != lock.token
    again.release()


def test_a_worker_adopts_the_lock_whose_token_it_was_handed(tmp_path: Path) -> None:
    launcher = acquire(tmp_path, "run")
    worker = acquire(tmp_path, "worker", handover=launcher.token)
    assert live_owner(tmp_path).role == "worker" and worker.held()
    launcher.release()  # the file names the worker now: the launcher leaves it alone
    assert live_owner(tmp_path) == worker.owner
    worker.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_an_owner_whose_process_is_gone_is_stale_and_its_lock_is_broken(tmp_path: Path) -> None:
    _write_lock(tmp_path, pid=_dead_pid())
    assert live_owner(tmp_path) is None
    lock = acquire(tmp_path, "worker")
    assert lock.owner.pid == os.getpid()
    lock.release()


def test_a_reused_pid_is_not_the_owner(tmp_path: Path) -> None:
    start = this_process("worker").pid_start
    if start is None:
        pytest.skip("no /proc: process start times are unknown")
    _write_lock(tmp_path, pid_start=start - 1)  # our pid, but another process's start time
    assert live_owner(tmp_path) is None


def test_an_owner_on_another_machine_lives_by_its_heartbeat(tmp_path: Path) -> None:
    path = _write_lock(tmp_path, host="node-elsewhere", boot_id="another-boot", pid=1)
    assert live_owner(tmp_path).host == "node-elsewhere"
    with pytest.raises(CellBusy, match="node-elsewhere"):
        acquire(tmp_path, "worker")
    old = time.time() - cell_lock.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    assert live_owner(tmp_path) is None
    acquire(tmp_path, "worker").release()


def test_the_same_host_name_on_another_machine_is_judged_by_heartbeat(tmp_path: Path) -> None:
    path = _write_lock(tmp_path, boot_id="another-boot", pid=_dead_pid())
    assert live_owner(tmp_path) is not None  # its pid means nothing here
    old = time.time() - cell_lock.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    assert live_owner(tmp_path) is None


def test_a_damaged_lock_is_stale(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("{not json")
    assert live_owner(tmp_path) is None
    lock = acquire(tmp_path, "worker")
    assert lock.held()
    lock.release()


def test_the_heartbeat_refreshes_held_locks_only(tmp_path: Path) -> None:
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.mkdir()
    theirs.mkdir()
    lock = acquire(mine, "worker")
    other = _write_lock(theirs, token="someone-else")
    old = time.time() - 100
    for path in (lock.path, other):
        os.utime(path, (old, old))
    cell_lock.keeper.beat()
    assert lock.path.stat().st_mtime > old + 50 and other.stat().st_mtime == pytest.approx(old)
    lock.release()


def test_a_lock_taken_over_meanwhile_is_not_held_any_more(tmp_path: Path) -> None:
    lock = acquire(tmp_path, "worker")
    _write_lock(tmp_path, token="the-new-owner")
    assert not lock.held()
    lock.release()  # does not remove the new owner's lock
    assert live_owner(tmp_path).token == "the-new-owner"


def _race(run_dir: str, barrier: object, done: object, results: object) -> None:
    barrier.wait()
    try:
        acquire(Path(run_dir), "worker")
        results.put("won")
    except CellBusy:
        results.put("busy")
    done.wait()  # keep a won lock alive until every racer has tried


@pytest.mark.parametrize("round_", range(3))
def test_of_many_processes_breaking_one_stale_lock_exactly_one_wins(tmp_path: Path,
                                                                    round_: int) -> None:
    _write_lock(tmp_path, pid=_dead_pid())
    ctx = multiprocessing.get_context("fork")
    n = 6
    barrier, done, results = ctx.Barrier(n), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(tmp_path), barrier, done, results))
             for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=60) for _ in range(n))
    done.set()
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["busy"] * (n - 1) + ["won"]
