"""Local executor: each cell in its own process, several at a time, GPUs handed out as slots.

Build choice: plain subprocesses rather than submitit's LocalExecutor, which neither throttles
nor hides GPUs per job unless configured; here one crashing cell cannot take the others down,
and each process sees only its GPU slot (`CUDA_VISIBLE_DEVICES`) and the cell's CPU thread count
(`OMP_NUM_THREADS`; the worker also sets it in torch).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness.cell_lock import live_owner
from harness.errors import HarnessError
from harness.executors.live import LiveBars
from harness.executors.progress import cell_label, finished_line
from harness.runner import ClaimedCell
from harness.store import now, read_status, update_status
from harness.worker import EXIT_BUSY

Running = dict[int, tuple[subprocess.Popen, ClaimedCell, float]]


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip()])
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # torch without CUDA support
        return 0


class LocalExecutor:
    """Run cells as `python -m harness.worker` processes, at most `max_parallel` at once."""

    def __init__(self, max_parallel: int | None = None, quiet: bool = False, **_: object) -> None:
        gpus = _gpu_count()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.gpu_ids = ([v.strip() for v in visible.split(",") if v.strip()] if visible
                        else [str(i) for i in range(gpus)])
        self.max_parallel = max_parallel or max(1, len(self.gpu_ids) or min(2, os.cpu_count() or 1))
        self.stride = 1  # GPUs per slot: the largest world size of the cells submitted
        self.quiet = quiet
        self.live = LiveBars(enabled=False if quiet else None)  # bars on a terminal only

    def _env(self, slot: int, cell: ClaimedCell) -> dict[str, str]:
        env = dict(os.environ)
        w, n = cell.cfg.world_size, len(self.gpu_ids)
        # a cell on w ranks takes w GPUs, one per rank, from its slot's block of `stride` GPUs
        env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_ids[(slot * self.stride + k) % n]
                                               for k in range(w)) if n else ""
        env["OMP_NUM_THREADS"] = str(cell.cfg.cpu_threads)
        return env

    def plan_slots(self, cells: Sequence[ClaimedCell]) -> None:
        """Give each slot a block of GPUs as large as the largest cell's world size, and run
        no more cells at once than the GPUs have blocks for (cells never share a GPU)."""
        self.stride = max((c.cfg.world_size for c in cells), default=1)
        if self.gpu_ids and self.stride > 1:
            self.max_parallel = min(self.max_parallel, max(1, len(self.gpu_ids) // self.stride))

    def submit(self, cells: Sequence[ClaimedCell]) -> None:
        self.plan_slots(cells)
        running: Running = {}
        try:
            self._loop(list(cells), running)
        except KeyboardInterrupt:  # the children got the signal too: let them record it
            self.live.close()
            for proc, _, _ in running.values():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            raise

    def _start(self, slot: int, cell: ClaimedCell) -> subprocess.Popen:
        run_dir = Path(cell.cfg.run_dir)
        w = cell.cfg.world_size
        if self.gpu_ids and w > len(self.gpu_ids):
            raise HarnessError(f"{cell_label(cell.cfg)}: world_size {w} needs {w} GPUs; this "
                               f"machine shows {len(self.gpu_ids)}")
        # build choice: torchrun starts the ranks (a free port of its own with --standalone) and
        # stops them all when one dies, so a dead rank fails the cell instead of hanging it
        ranks = ([] if w == 1 else ["-m", "torch.distributed.run", "--standalone",
                                    f"--nproc-per-node={w}"])
        command = [sys.executable, *ranks, "-m", "harness.worker", str(run_dir / "config.yaml"),
                   "--handover", cell.lock.token, *(["--fresh"] if cell.fresh else [])]
        with open(run_dir / "worker.out", "ab") as out:
            return subprocess.Popen(command, env=self._env(slot, cell), stdout=out,
                                    stderr=subprocess.STDOUT)

    def _loop(self, queue: list[ClaimedCell], running: Running) -> None:
        total, done = len(queue), 0
        while queue or running:
            free = [s for s in range(self.max_parallel) if s not in running]
            while queue and free:
                slot, cell = free.pop(0), queue.pop(0)
                running[slot] = (self._start(slot, cell), cell, time.time())
                if not self.quiet:
                    self.live.write(f"      started   {cell_label(cell.cfg)}")
                self.live.start(slot, cell.cfg)
            time.sleep(0.2)
            self.live.poll()
            for slot, (proc, cell, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[slot]
                self.live.finish(slot)
                done += 1
                run_dir = Path(cell.cfg.run_dir)
                owner = live_owner(run_dir)
                unrecorded = proc.returncode not in (0, 1, EXIT_BUSY) or (
                    proc.returncode == 1 and read_status(run_dir).get("state") == "running")
                if unrecorded and (owner is None or owner.token == cell.lock.token):
                    update_status(run_dir, state="failed", ended=now(),
                                  error=f"worker process exited with code {proc.returncode}",
                                  error_tail=_tail(run_dir / "worker.out"))
                cell.lock.release()
                if not self.quiet:
                    self.live.write(finished_line(done, total, cell.cfg, time.time() - t0,
                                                  busy=proc.returncode == EXIT_BUSY))


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
