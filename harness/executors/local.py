"""Local executor: each cell in its own process, several at a time, GPUs handed out as slots.

Build choice: plain subprocesses rather than submitit's LocalExecutor, which neither throttles
nor hides GPUs per job unless configured; here one crashing cell cannot take the others down,
and each process sees only its GPU slot (`CUDA_VISIBLE_DEVICES`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from harness.config import CellConfig
from harness.executors.live import LiveBars
from harness.executors.progress import cell_label, finished_line
from harness.store import update_status


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
        self.quiet = quiet
        self.live = LiveBars(enabled=False if quiet else None)  # bars on a terminal only

    def _env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        env["CUDA_VISIBLE_DEVICES"] = (self.gpu_ids[slot % len(self.gpu_ids)]
                                       if self.gpu_ids else "")
        threads = max(1, (os.cpu_count() or 1) // self.max_parallel)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        return env

    def submit(self, cfgs: Sequence[CellConfig]) -> None:
        running: dict[int, tuple[subprocess.Popen, CellConfig, float]] = {}
        try:
            self._loop(list(cfgs), running)
        except KeyboardInterrupt:  # the children got the signal too: let them record it
            self.live.close()
            for proc, _, _ in running.values():
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
            raise

    def _loop(self, queue: list[CellConfig],
              running: dict[int, tuple[subprocess.Popen, CellConfig, float]]) -> None:
        total, done = len(queue), 0
        while queue or running:
            free = [s for s in range(self.max_parallel) if s not in running]
            while queue and free:
                slot, cfg = free.pop(0), queue.pop(0)
                run_dir = Path(cfg.run_dir)
                out = open(run_dir / "worker.out", "ab")
                proc = subprocess.Popen([sys.executable, "-m", "harness.worker",
                                         str(run_dir / "config.yaml")], env=self._env(slot),
                                        stdout=out, stderr=subprocess.STDOUT)
                out.close()
                running[slot] = (proc, cfg, time.time())
                if not self.quiet:
                    self.live.write(f"      started   {cell_label(cfg)}")
                self.live.start(slot, cfg)
            time.sleep(0.2)
            self.live.poll()
            for slot, (proc, cfg, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[slot]
                self.live.finish(slot)
                done += 1
                if proc.returncode not in (0, 1):  # killed or crashed before recording
                    update_status(Path(cfg.run_dir), state="failed",
                                  error=f"worker process exited with code {proc.returncode}",
                                  error_tail=_tail(Path(cfg.run_dir) / "worker.out"))
                if not self.quiet:
                    self.live.write(finished_line(done, total, cfg, time.time() - t0))


def _tail(path: Path, lines: int = 12) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
