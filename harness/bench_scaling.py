"""`harness bench --world-size N`: data-parallel scaling of a training step, JSON out.

For each method it times the same global batch (the paper's, or `--batch`) trained by 1 and by N
ranks (each rank batch / N rows, gradients averaged: how the harness trains a cell on N devices)
and reports images/s per world size and the speed-up over one rank. Ranks are processes started
with `torch.multiprocessing` and joined through torch.distributed: NCCL on N GPUs (one each),
gloo on CPU, where each rank is given `threads` CPU threads. The timing is `harness.bench`'s:
the median of synchronised windows after warm-up, on rank 0, on random data of the dataset's
shape; the fast data path (the only one ranks train on), no compilation.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

from harness.bench import (bench_data, device_name, output_path, phases, step_overrides,
                           time_steps)
from harness.config import CellConfig
from harness.distributed import Ranks, close_process_group, free_port
from harness.errors import HarnessError
from harness.method import TrainableMethod, resolve_device
from harness.registry import method_class
from harness.store import atomic_write_json


def _rank(rank: int, spec: dict[str, Any], out: str) -> None:
    """One rank of a timed run (`torch.multiprocessing` entry point); rank 0 writes `out`."""
    w = spec["world_size"]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(spec["port"]), RANK=str(rank),
                      WORLD_SIZE=str(w), LOCAL_RANK=str(rank))
    torch.set_num_threads(spec["threads"])
    cls = method_class(spec["method"])
    params = cls.distribute_params(cls.resolve_params(spec["dataset"], spec["overrides"]), w)
    cfg = CellConfig(method=spec["method"], dataset=spec["dataset"], ir=spec["ir"], seed=0,
                     params=params, device=spec["device"]).with_location(world_size=w)
    method = cls()
    method.ranks = Ranks(rank, w, rank)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            method.setup_with_data(cfg, Path(tmp), bench_data(spec["dataset"], spec["ir"]))
            paper = cls.resolve_params(spec["dataset"])
            times = {phase: time_steps(method, epoch, spec["warmup"], spec["windows"],
                                       spec["steps"]) for phase, epoch, _ in phases(method, paper)}
    finally:
        close_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps({"batch_size": method.p.batch_size, "times": times}))


def time_world(spec: dict[str, Any]) -> dict[str, Any]:
    """Rank 0's step times for `spec["world_size"]` ranks (processes started and joined here)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rank0.json")
        mp.start_processes(_rank, args=({**spec, "port": free_port()}, out),
                           nprocs=spec["world_size"], join=True, start_method="spawn")
        return json.loads(Path(out).read_text())


def check_world_size(world_size: int, device: str) -> None:
    """Refuse a world size above the GPUs present when the run would use GPUs."""
    if world_size < 1:
        raise HarnessError(f"--world-size {world_size}: use a number >= 1")
    gpus = torch.cuda.device_count()
    if (device.startswith("cuda") or (device == "auto" and gpus > 0)) and gpus < world_size:
        raise HarnessError(f"--world-size {world_size} needs {world_size} GPUs but this machine "
                           f"has {gpus}: lower --world-size, or time {world_size} CPU processes "
                           "with --device cpu")


def run_scaling(methods: list[str], world_size: int, *, device: str = "auto",
                dataset: str = "cifar10", ir: Any = 10, batch: int | None = None,
                size: str | None = None, warmup: int = 3, windows: int = 5, steps: int = 5,
                threads: int = 1, out: Path | None = None) -> dict[str, Any]:
    """Images/s of each method's step on 1 and `world_size` ranks; writes JSON to `out` (a file,
    or a folder: named by device)."""
    check_world_size(world_size, device)
    dev = resolve_device(device)
    size = size or ("paper" if dev.type == "cuda" else "tiny")
    entries = []
    for name in methods:
        cls = method_class(name)
        if not issubclass(cls, TrainableMethod) or not cls.data_parallel:
            raise HarnessError(f"method '{name}' does not train data-parallel: drop it from "
                               "--method for --world-size")
        spec = {"method": name, "dataset": dataset, "ir": ir, "device": str(dev),
                "overrides": step_overrides(cls, size, batch), "threads": threads,
                "warmup": warmup, "windows": windows, "steps": steps}
        base: dict[str, float] = {}
        for w in sorted({1, world_size}):
            run = time_world({**spec, "world_size": w})
            for phase, times in run["times"].items():
                sec = statistics.median(times)
                rate = run["batch_size"] / sec
                base.setdefault(phase, rate)
                entries.append({
                    "method": name, "phase": phase, "world_size": w,
                    "batch_size": run["batch_size"], "batch_per_rank": run["batch_size"] // w,
                    "images_per_s": rate, "ms_per_step": 1000 * sec,
                    "ms_per_step_windows": [1000 * t for t in times],
                    "speedup_vs_1": rate / base[phase], "efficiency": rate / base[phase] / w,
                    "network": size, "device_type": dev.type,
                    "backend": "nccl" if dev.type == "cuda" else "gloo",
                    "threads_per_rank": threads if dev.type == "cpu" else None})
    report = {"kind": "scaling", "device": device_name(dev), "device_type": dev.type,
              "torch": torch.__version__, "cpu_count": os.cpu_count(), "dataset": dataset,
              "ir": ir, "world_sizes": sorted({1, world_size}),
              "timing": {"warmup_steps": warmup, "windows": windows, "steps_per_window": steps,
                         "statistic": "median window on rank 0"},
              "entries": entries}
    if out is not None:
        atomic_write_json(output_path(out, report), report)
    return report


def scaling_lines(report: dict[str, Any]) -> list[str]:
    """One human line per method, phase and world size."""
    lines = [f"{report['device']} ({report['device_type']}), {report['dataset']} "
             f"ir={report['ir']}, world sizes {report['world_sizes']}"]
    for e in report["entries"]:
        lines.append(f"{e['method']:<20} {e['phase']:<8} world {e['world_size']:>2} x batch "
                     f"{e['batch_per_rank']:>4}: {e['images_per_s']:9.0f} img/s  "
                     f"{e['ms_per_step']:8.1f} ms/step  x{e['speedup_vs_1']:.2f} vs 1 rank "
                     f"({100 * e['efficiency']:.0f}% efficiency)")
    return lines
