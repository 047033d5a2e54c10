"""`RunCell`: the callable every executor runs for one cell (checkpointable for SLURM requeue).

It carries a plain config dict, never plugin objects, and re-resolves plugins by name in the
process that runs it. It first takes the cell's lock (`harness.cell_lock`), adopting the one its
launcher holds when given that lock's token, so one cell never has two trainers; a cell owned by
another live process is left alone (`busy`). Under the lock it returns at once for a completed
cell (in-job guard) unless `fresh` (`--mode force`: the old results are removed now, not when
the run was submitted), and resumes from `ckpt/last.pt` otherwise, so duplicate submissions and
requeues are harmless.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from harness import plugins
from harness.cell_lock import CellBusy, CellLock, acquire, live_owner, slurm_job_id
from harness.config import CellConfig, read_config
from harness.distributed import (Ranks, close_process_group, export_slurm_ranks, join,
                                 rank0_decides, ranks_from_env)
from harness.errors import HarnessError, TrainingFailure
from harness.evaluate import evaluate_cell
from harness.executors.progress import cell_label
from harness.progress import epoch_progress
from harness.provenance import environment, file_sha256
from harness.registry import method_class
from harness.training import resolve_device
from harness.store import (CorruptRunFile, append_log, atomic_write_json, clear_results,
                           inspect_cell, now, read_run_file, read_status, update_status)
from harness.threads import cpu_threads

EXIT_BUSY = 3  # `python -m harness.worker`: another live process owns the cell


class RunCell(submitit.helpers.Checkpointable):
    """Run one cell from its plain config dict; returns the final state, or `busy`."""

    def __init__(self, cfg: dict[str, Any], fresh: bool = False,
                 handover: str | None = None) -> None:
        self.cfg, self.fresh, self.handover = cfg, fresh, handover

    def __call__(self) -> str:
        cfg = CellConfig.from_dict(self.cfg)
        run_dir = Path(cfg.run_dir)
        export_slurm_ranks()
        ranks = ranks_from_env()
        if not ranks.main:
            return self._follow(cfg, run_dir, ranks)
        self._told = False  # reset: a requeued attempt tells its own ranks
        try:
            try:
                lock = acquire(run_dir, "worker", self.handover)
            except CellBusy as exc:
                print(f"harness: not started: {exc}", file=sys.stderr, flush=True)
                return "busy"
            try:
                return self._owned(cfg, run_dir, lock)
            finally:
                lock.release()
        finally:
            self._tell_ranks(cfg, train=False)  # no-op once they were told to train

    def _tell_ranks(self, cfg: CellConfig, train: bool, resume: bool = False) -> None:
        """Rank 0, once per attempt: tell the other ranks whether they train (and resume), so
        that they never wait out the process-group timeout for a cell rank 0 does not train
        (busy, already completed, failed before training). No-op on one rank."""
        ranks = ranks_from_env()
        if not ranks.distributed or self._told:
            return
        self._told = True
        rank0_decides(ranks, join(ranks, resolve_device(cfg.device)), [int(train), int(resume)])
        if not train:
            close_process_group()

    def _owned(self, cfg: CellConfig, run_dir: Path, lock: CellLock) -> str:
        if inspect_cell(run_dir).state == "completed" and not self.fresh:
            return "completed"
        if self.fresh:
            clear_results(run_dir)
            append_log(run_dir, "forced rerun: previous results and checkpoint removed")
        plugins.load_all(Path(cfg.plugin_root) if cfg.plugin_root else None)
        status = read_status(run_dir)
        job_ids = list(status.get("job_ids", []))
        job = slurm_job_id()
        if job and job not in job_ids:
            job_ids.append(job)
        update_status(run_dir, state="running", attempts=int(status.get("attempts", 0)) + 1,
                      started=now(), host=socket.gethostname(), pid=os.getpid(), job_ids=job_ids,
                      error=None, error_tail=None, log_path=str(run_dir / "log.txt"))
        try:
            with cpu_threads(cfg.cpu_threads):
                return self._run(cfg, run_dir, lock)
        except CellBusy as exc:  # lost the lock (its heartbeat stalled): the new owner records
            append_log(run_dir, f"stopped without writing results: {exc}")
            return "busy"
        except TrainingFailure as exc:
            append_log(run_dir, f"FAILED: {exc}")
            update_status(run_dir, state="failed", ended=now(), error=str(exc),
                          error_tail=str(exc), failure=exc.details)
            return "failed"
        except (KeyboardInterrupt, SystemExit):
            if not getattr(self, "_requeued", False):  # a requeue has recorded `pending`
                update_status(run_dir, state="interrupted", ended=now(), error="interrupted")
            raise
        except Exception as exc:
            tail = traceback.format_exc()
            append_log(run_dir, f"FAILED with an exception:\n{tail}")
            message = str(exc) if isinstance(exc, HarnessError) else f"{type(exc).__name__}: {exc}"
            update_status(run_dir, state="failed", ended=now(), error=message,
                          error_tail="\n".join(tail.strip().splitlines()[-12:]))
            return "failed"

    def _follow(self, cfg: CellConfig, run_dir: Path, ranks: Ranks) -> str:
        """A rank other than 0: train alongside rank 0 when it says so (and resume when it
        does); rank 0 holds the lock and writes everything, and the cell's status is its (a
        failure here fails rank 0 through the process group, and the launcher records it)."""
        try:
            train, resume = rank0_decides(ranks, join(ranks, resolve_device(cfg.device)), [0, 0])
            if train:
                plugins.load_all(Path(cfg.plugin_root) if cfg.plugin_root else None)
                method = method_class(cfg.method)()
                method.ranks = ranks
                with cpu_threads(cfg.cpu_threads):
                    method.train(cfg, run_dir, bool(resume))
        finally:
            close_process_group()
        return "rank"

    @staticmethod
    def _method(method_cls: type, cfg: CellConfig) -> Any:
        """A fresh method object that reports its epochs (a bar on a terminal, lines in logs)."""
        method = method_cls()
        method.progress = functools.partial(epoch_progress, cell_label(cfg))
        method.ranks = ranks_from_env()
        return method

    def _train(self, method_cls: type, cfg: CellConfig, run_dir: Path) -> tuple[Any, dict]:
        """Train (resuming from `ckpt/last.pt`); a damaged checkpoint is set aside and the cell
        trains from scratch."""
        ckpt = run_dir / "ckpt" / "last.pt"
        method = self._method(method_cls, cfg)
        if method.ranks.distributed and ckpt.exists():
            try:  # the other ranks are told to resume only from a checkpoint that reads
                read_run_file(ckpt)
            except CorruptRunFile as exc:
                self._set_aside(ckpt, exc)
        self._tell_ranks(cfg, train=True, resume=ckpt.exists())
        try:
            return method, method.train(cfg, run_dir, ckpt.exists())
        except CorruptRunFile as exc:
            if exc.path != ckpt:
                raise
            self._set_aside(ckpt, exc)
            method = self._method(method_cls, cfg)
            return method, method.train(cfg, run_dir, False)

    @staticmethod
    def _set_aside(ckpt: Path, exc: CorruptRunFile) -> None:
        """Move a damaged checkpoint to `last.pt.corrupt` (kept for a post-mortem)."""
        os.replace(ckpt, ckpt.with_name("last.pt.corrupt"))
        append_log(ckpt.parent.parent, f"{exc}; moved to ckpt/last.pt.corrupt, training from "
                                       "scratch")

    def _run(self, cfg: CellConfig, run_dir: Path, lock: CellLock) -> str:
        plugin_root = Path(cfg.plugin_root) if cfg.plugin_root else plugins.default_plugin_root()
        method_cls = method_class(cfg.method)
        plugin_file = Path(sys.modules[method_cls.__module__].__file__ or "")
        env = environment(plugin_root)
        env["plugin_file_sha256"] = file_sha256(plugin_file) if plugin_file.is_file() else None
        atomic_write_json(run_dir / "env.json", env)
        append_log(run_dir, f"start {cfg.method} on {cfg.dataset} ir={cfg.ir} seed={cfg.seed} "
                            f"(resume={(run_dir / 'ckpt' / 'last.pt').exists()}, "
                            f"host={env['host']}, cpu_threads={cfg.cpu_threads})")
        t0 = time.time()
        try:
            method, summary = self._train(method_cls, cfg, run_dir)
        finally:
            close_process_group()  # rank 0 evaluates alone
        append_log(run_dir, f"trained in {time.time() - t0:.1f}s: {summary}")
        self._check_owner(run_dir, lock)
        t_eval = time.time()
        metrics = evaluate_cell(method, cfg, run_dir)
        metrics["eval_seconds"] = time.time() - t_eval
        metrics["train"] = summary
        metrics["reference_card"] = method_cls.reference_card_for(cfg.dataset)
        metrics["run_card"] = method.run_card()
        metrics["env"] = {"git_sha": env["git_sha"], "dirty": env["dirty"],
                          "device": env["device"].get("gpu", "cpu"),
                          "cpu_threads": env["device"]["cpu_threads"]}
        self._check_owner(run_dir, lock)
        atomic_write_json(run_dir / "metrics.json", metrics)
        primary = metrics["variants"][metrics["primary"]]["metrics"]
        append_log(run_dir, "completed: " + ", ".join(
            f"{k}={primary[k]:.4f}" for k in ("acc", "nmi", "ari") if k in primary))
        update_status(run_dir, state="completed", ended=now())
        return "completed"

    @staticmethod
    def _check_owner(run_dir: Path, lock: CellLock) -> None:
        """Raise CellBusy when another process has taken the cell (results are not written)."""
        if not lock.held():
            raise CellBusy(run_dir, live_owner(run_dir))

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """On timeout/preemption: requeue a fresh RunCell; training resumes from `ckpt/last.pt`."""
        run_dir = Path(self.cfg["run_dir"])
        append_log(run_dir, "time limit or preemption: requeueing; will resume from checkpoint")
        update_status(run_dir, state="pending", requeued=now())
        self._requeued = True
        return submitit.helpers.DelayedSubmission(RunCell(self.cfg, handover=self.handover))


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.worker RUN_DIR/config.yaml [--fresh] [--handover TOKEN]`: run one cell
    in this process; exit 0 completed, 1 failed, 3 when another live process owns the cell."""
    parser = argparse.ArgumentParser(prog="python -m harness.worker")
    parser.add_argument("config", type=Path, help="RUN_DIR/config.yaml")
    parser.add_argument("--fresh", action="store_true", help="clear old results first (force)")
    parser.add_argument("--handover", default=None, help="token of the launcher's cell lock")
    args = parser.parse_args(argv)
    try:
        cfg = read_config(args.config)
    except HarnessError as exc:
        print(f"harness.worker: error: {exc}", file=sys.stderr)
        return 2
    state = RunCell(cfg.to_dict(), args.fresh, args.handover)()
    return {"completed": 0, "rank": 0, "busy": EXIT_BUSY}.get(state, 1)


if __name__ == "__main__":
    sys.exit(main())
