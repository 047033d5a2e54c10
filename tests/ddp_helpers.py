"""CPU data-parallel tests: a cell trained by N gloo ranks in spawned processes."""

from __future__ import annotations

import multiprocessing
import os
import socket
from pathlib import Path
from typing import Any

import torch

from harness import plugins
from harness.config import CellConfig
from harness.distributed import close_process_group, ranks_from_env
from harness.grids import resolve
from harness.registry import method_class


def cell(method: str, run_dir: Path, world_size: int, **params: Any) -> CellConfig:
    """A tiny synthetic IR-10 cell of `method` on `world_size` ranks (test budget + params)."""
    settings = {"params": params, "world_size": world_size}
    cfg = resolve({"method": method, "dataset": "synthetic", "ir": 10, "seed": 1,
                   "settings": settings}, "test", "ddp", run_dir, Path("."), None, "cpu")
    return cfg.with_location(run_dir=str(run_dir))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stopped(Exception):
    """Raised on every rank after the checkpoint of the epoch to stop at."""


def train_rank(rank: int, world_size: int, port: int, cfg: dict[str, Any], resume: bool,
               stop_after: int | None = None, die_at_step: int | None = None) -> None:
    """One rank: train the cell (stop after an epoch's checkpoint, or die at a step)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    plugins.load_all()
    c = CellConfig.from_dict(cfg)
    method = method_class(c.method)()
    method.ranks = ranks_from_env()
    if stop_after is not None:
        save = method.save_checkpoint

        def save_then_stop() -> None:
            save()
            if method.epoch_done == stop_after:
                raise Stopped

        method.save_checkpoint = save_then_stop  # type: ignore[method-assign]
    if die_at_step is not None and rank == 1:
        step = method.take_step

        def die(*args: Any, **kw: Any) -> torch.Tensor:
            if method.global_step + 1 == die_at_step:
                os._exit(17)  # as a killed process: no cleanup, no message to the peers
            return step(*args, **kw)

        method.take_step = die  # type: ignore[method-assign]
    try:
        summary = method.train(c, Path(c.run_dir), resume)
        if method.ranks.main:
            torch.save(summary, Path(c.run_dir) / "summary.pt")
    except Stopped:
        pass
    finally:
        close_process_group()


def start_ranks(cfg: CellConfig, resume: bool = False, **kw: Any) -> list[Any]:
    """Start `cfg.world_size` rank processes (spawn); returns them unjoined."""
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=train_rank, args=(r, cfg.world_size, port, cfg.to_dict(), resume),
                         kwargs=kw) for r in range(cfg.world_size)]
    for p in procs:
        p.start()
    return procs


def run_ranks(cfg: CellConfig, resume: bool = False, **kw: Any) -> None:
    """Train `cfg` on its ranks to the end (or the stop); every rank must exit cleanly."""
    procs = start_ranks(cfg, resume, **kw)
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * len(procs)


def checkpoint(run_dir: Path) -> dict[str, Any]:
    return torch.load(Path(run_dir) / "ckpt" / "last.pt", weights_only=False)
