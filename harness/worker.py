"""`RunCell`: the callable every executor runs for one cell (checkpointable for SLURM requeue).

It carries a plain config dict, never plugin objects, and re-resolves plugins by name in the
process that runs it. It returns at once for a completed cell (in-job guard) and resumes from
`ckpt/last.pt` otherwise, so duplicate submissions and requeues are harmless.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import submitit

from harness import plugins
from harness.config import CellConfig, read_config
from harness.errors import HarnessError, TrainingFailure
from harness.evaluate import evaluate_cell
from harness.provenance import environment, file_sha256
from harness.registry import method_class
from harness.store import (append_log, atomic_write_json, cell_state, now, read_status,
                           update_status)


def _job_id() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


class RunCell(submitit.helpers.Checkpointable):
    """Run one cell from its plain config dict; returns the final state."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    def __call__(self) -> str:
        cfg = CellConfig.from_dict(self.cfg)
        run_dir = Path(cfg.run_dir)
        if cell_state(run_dir) == "completed":
            return "completed"
        plugins.load_all(Path(cfg.plugin_root) if cfg.plugin_root else None)
        status = read_status(run_dir)
        job_ids = list(status.get("job_ids", []))
        job = _job_id()
        if job and job not in job_ids:
            job_ids.append(job)
        update_status(run_dir, state="running", attempts=int(status.get("attempts", 0)) + 1,
                      started=now(), host=socket.gethostname(), pid=os.getpid(), job_ids=job_ids,
                      error=None, error_tail=None, log_path=str(run_dir / "log.txt"))
        try:
            return self._run(cfg, run_dir)
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

    def _run(self, cfg: CellConfig, run_dir: Path) -> str:
        plugin_root = Path(cfg.plugin_root) if cfg.plugin_root else plugins.default_plugin_root()
        method_cls = method_class(cfg.method)
        plugin_file = Path(sys.modules[method_cls.__module__].__file__ or "")
        env = environment(plugin_root)
        env["plugin_file_sha256"] = file_sha256(plugin_file) if plugin_file.is_file() else None
        atomic_write_json(run_dir / "env.json", env)
        method = method_cls()
        resume = (run_dir / "ckpt" / "last.pt").exists()
        append_log(run_dir, f"start {cfg.method} on {cfg.dataset} ir={cfg.ir} seed={cfg.seed} "
                            f"(resume={resume}, host={env['host']})")
        t0 = time.time()
        summary = method.train(cfg, run_dir, resume)
        append_log(run_dir, f"trained in {time.time() - t0:.1f}s: {summary}")
        t_eval = time.time()
        metrics = evaluate_cell(method, cfg, run_dir)
        metrics["eval_seconds"] = time.time() - t_eval
        metrics["train"] = summary
        metrics["reference_card"] = method_cls.reference_card_for(cfg.dataset)
        metrics["run_card"] = method.run_card()
        metrics["env"] = {"git_sha": env["git_sha"], "dirty": env["dirty"],
                          "device": env["device"].get("gpu", "cpu")}
        atomic_write_json(run_dir / "metrics.json", metrics)
        primary = metrics["variants"][metrics["primary"]]["metrics"]
        append_log(run_dir, "completed: " + ", ".join(
            f"{k}={primary[k]:.4f}" for k in ("acc", "nmi", "ari") if k in primary))
        update_status(run_dir, state="completed", ended=now())
        return "completed"

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """On timeout/preemption: requeue a fresh RunCell; training resumes from `ckpt/last.pt`."""
        run_dir = Path(self.cfg["run_dir"])
        append_log(run_dir, "time limit or preemption: requeueing; will resume from checkpoint")
        update_status(run_dir, state="pending", requeued=now())
        self._requeued = True
        return submitit.helpers.DelayedSubmission(RunCell(self.cfg))


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.worker RUN_DIR/config.yaml`: run one cell in this process."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m harness.worker RUN_DIR/config.yaml", file=sys.stderr)
        return 2
    cfg = read_config(Path(args[0]))
    state = RunCell(cfg.to_dict())()
    return 0 if state == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
