"""CPU data-parallel tests: a cell trained by N gloo ranks in spawned processes."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import torch

from harness import plugins
from harness.config import CellConfig
from harness.distributed import (close_process_group, free_port, init_process_group,
                                 ranks_from_env)
from harness.grids import resolve
from harness.registry import method_class


def cell(method: str, run_dir: Path, world_size: int, **params: Any) -> CellConfig:
    """A tiny synthetic IR-10 cell of `method` on `world_size` ranks (test budget + params)."""
    settings = {"params": params, "world_size": world_size}
    cfg = resolve({"method": method, "dataset": "synthetic", "ir": 10, "seed": 1,
                   "settings": settings}, "test", "ddp", run_dir, Path("."), None, "cpu")
    return cfg.with_location(run_dir=str(run_dir))


class Stopped(Exception):
    """Raised on every rank after the checkpoint of the epoch to stop at."""


def rank_env(rank: int, world_size: int, port: int) -> None:
    """The env:// rendezvous of rank `rank` (as torchrun sets it), one thread."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def fetch_on_rank(rank: int, world_size: int, port: int) -> None:
    """One rank: `Ranks.fetch` gives it its share of global batches (exit code 1 if not)."""
    rank_env(rank, world_size, port)
    ranks = ranks_from_env()
    init_process_group(ranks, torch.device("cpu"))
    n, data = 11, torch.arange(11 * 6, dtype=torch.uint8).view(11, 2, 3)
    try:
        # a shuffled batch, one whose rows rank 0 alone holds, one of every row in reverse
        for rows in (torch.randperm(n, generator=torch.Generator().manual_seed(3))[:7],
                     torch.tensor([2, 0, 3, 1]), torch.arange(n).flip(0)):
            start, stop = ranks.bounds(len(rows))
            got = ranks.fetch(ranks.shard(data), rows, n)
            if not torch.equal(got, data[rows][start:stop]):
                raise SystemExit(1)
    finally:
        close_process_group()


def blocks_on_rank(rank: int, world_size: int, port: int, cfg: dict[str, Any], out: str) -> None:
    """One rank: set the cell up and record how many images it holds on device and host."""
    rank_env(rank, world_size, port)
    plugins.load_all()
    c = CellConfig.from_dict(cfg)
    method = method_class(c.method)()
    method.ranks = ranks_from_env()
    try:
        method.setup(c, Path(c.run_dir))
        held = {"device": len(method.images), "host": len(method.data.images),
                "subset": len(method.data)}
        (Path(out) / f"rank{rank}.json").write_text(json.dumps(held))
    finally:
        close_process_group()


def spawn(target: Any, world_size: int, *args: Any) -> list[int | None]:
    """Run `target(rank, world_size, port, *args)` in `world_size` spawned processes; their exit
    codes."""
    ctx = multiprocessing.get_context("spawn")
    port = free_port()
    procs = [ctx.Process(target=target, args=(r, world_size, port, *args))
             for r in range(world_size)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    return [p.exitcode for p in procs]


def train_rank(rank: int, world_size: int, port: int, cfg: dict[str, Any], resume: bool,
               stop_after: int | None = None, die_at_step: int | None = None) -> None:
    """One rank: train the cell (stop after an epoch's checkpoint, or die at a step)."""
    rank_env(rank, world_size, port)
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
