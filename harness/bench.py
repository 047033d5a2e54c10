"""`harness bench`: time one training step of a method in both data paths, JSON out.

For each method and data path (`fast`: uint8 data and augmentation on the device; `reference`:
torchvision CPU transforms in a DataLoader) it times the full step -- augmentation, forward,
backward, optimiser -- as the median of several synchronised windows after warm-up, and reports
images/s, ms/step, peak memory, the FLOP floor at a given peak throughput and the fraction of it
reached, and the projected time of the method's paper budget on the chosen dataset size.
Random uint8 images of the dataset's shape stand in for the data, so no files are needed.
"""

from __future__ import annotations

import math
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from harness.config import CellConfig
from harness.data.base import LTData
from harness.errors import HarnessError
from harness.method import Batch, TrainableMethod, resolve_device
from harness.registry import dataset_class, method_class
from harness.store import atomic_write_json


def bench_data(dataset: str, ir: Any, n: int | None = None) -> LTData:
    """Random uint8 images shaped like the LT subset of `dataset` at `ir` (no files needed)."""
    plugin = dataset_class(dataset)
    counts = plugin().lt_counts(ir) if ir != "native" else [plugin.n_max] * plugin.num_classes
    total = n or sum(counts)
    labels = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])[:total]
    g = torch.Generator().manual_seed(0)
    size = plugin.image_size
    images = torch.randint(0, 256, (total, 3, size, size), dtype=torch.uint8, generator=g)
    manifest = {"sha256": "bench", "counts": counts, "indices": list(range(total))}
    return LTData(dataset, images, labels, manifest, plugin.num_classes, plugin.class_names,
                  plugin.mean, plugin.std)


def _peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # process peak RSS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(method: TrainableMethod, epoch: int, warmup: int, windows: int,
               steps_per_window: int) -> list[float]:
    """Seconds per step of each timed window (steps drawn from the method's own batches)."""
    gen = torch.Generator(device=method.device).manual_seed(0)
    method.model.train()
    method.on_epoch_start(epoch, gen)

    def batches():
        while True:
            yield from method._batches(epoch, gen)

    stream = batches()

    def one_step() -> None:
        v1, v2, idx = next(stream)
        method.global_step += 1
        batch = Batch(method._prep(v1), method._prep(v2), idx, epoch, method.global_step, gen)
        method.training_step(batch)
        method.after_optimizer_step(method.global_step)

    for _ in range(warmup):
        one_step()
    _sync(method.device)
    out = []
    for _ in range(windows):
        t0 = time.perf_counter()
        for _ in range(steps_per_window):
            one_step()
        _sync(method.device)
        out.append((time.perf_counter() - t0) / steps_per_window)
    return out


def step_flops(method: TrainableMethod, epoch: int) -> float:
    """FLOPs of one training step (forward + backward of every network), counted by torch."""
    gen = torch.Generator(device=method.device).manual_seed(1)
    v1, v2, idx = next(iter(method._batches(epoch, gen)))
    batch = Batch(method._prep(v1), method._prep(v2), idx, epoch, method.global_step + 1, gen)
    with FlopCounterMode(display=False) as counter:
        method.training_step(batch)
    return float(counter.get_total_flops())


def bench_method(name: str, *, device: str, dataset: str, ir: Any, batch: int | None,
                 size: str, paths: list[str], warmup: int, windows: int, steps: int,
                 peak_tflops: float, compile: bool = False) -> list[dict[str, Any]]:
    """Benchmark entries (one per data path and training phase) for one method."""
    cls = method_class(name)
    if not issubclass(cls, TrainableMethod):
        raise HarnessError(f"method '{name}' has no training step to benchmark")
    paper = cls.resolve_params(dataset)
    overrides = {} if size == "paper" else {k: v for k, v in cls.test_params.items()
                                            if k not in ("epochs", "warmup_epochs")}
    if batch:
        overrides["batch_size"] = batch
    overrides["compile"] = compile
    data = bench_data(dataset, ir)
    dev = resolve_device(device)
    entries = []
    for path in paths:
        params = cls.resolve_params(dataset, {**overrides, "data_path": path})
        cfg = CellConfig(method=name, dataset=dataset, ir=ir, seed=0, params=params, device=str(dev))
        method = cls()
        method.setup_with_data(cfg, Path("."), data)
        phases = (method.bench_phases(paper) if hasattr(method, "bench_phases")
                  else [("train", 1, paper["epochs"])])
        for phase, epoch, n_epochs in phases:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            times = time_steps(method, epoch, warmup, windows, steps)
            sec = statistics.median(times)
            flops = step_flops(method, epoch)
            b = method.p.batch_size
            images_per_s = b / sec
            floor = peak_tflops * 1e12 / (flops / b) if flops else float("nan")
            paper_steps = n_epochs * math.ceil(len(data) / paper["batch_size"])
            entries.append({
                "method": name, "phase": phase, "data_path": path, "batch_size": b,
                "image_size": data.image_size, "ms_per_step": 1000 * sec,
                "ms_per_step_windows": [1000 * t for t in times],
                "images_per_s": images_per_s, "peak_memory_bytes": _peak_memory_bytes(dev),
                "flops_per_image": flops / b, "flop_floor_images_per_s": floor,
                "fraction_of_floor": images_per_s / floor if flops else None,
                "paper_epochs": n_epochs, "paper_batch_size": paper["batch_size"],
                "projected_paper_seconds": paper_steps * paper["batch_size"] / images_per_s,
                "network": size, "amp": params["amp"], "compile": compile,
            })
    return entries


def run_bench(methods: list[str], *, device: str = "auto", dataset: str = "cifar10", ir: Any = 10,
              batch: int | None = None, size: str | None = None,
              paths: tuple[str, ...] = ("fast", "reference"), warmup: int = 3, windows: int = 5,
              steps: int = 5, peak_tflops: float = 400.0, compile: bool = False,
              out: Path | None = None) -> dict[str, Any]:
    """Benchmark several methods; writes JSON to `out` and returns the report."""
    dev = resolve_device(device)
    size = size or ("paper" if dev.type == "cuda" else "tiny")
    entries = []
    for name in methods:
        entries += bench_method(name, device=device, dataset=dataset, ir=ir, batch=batch,
                                size=size, paths=list(paths), warmup=warmup, windows=windows,
                                steps=steps, peak_tflops=peak_tflops, compile=compile)
    for e in entries:  # fast/reference speed-up measured in the same run
        ref = next((r for r in entries if r["method"] == e["method"] and r["phase"] == e["phase"]
                    and r["data_path"] == "reference"), None)
        e["speedup_vs_reference"] = e["images_per_s"] / ref["images_per_s"] if ref else None
    totals: dict[str, dict[str, float]] = {}
    for e in entries:  # a method's paper budget = the sum of its phases (ConMix: SDCLR + ConMix)
        per_path = totals.setdefault(e["method"], {})
        per_path[e["data_path"]] = per_path.get(e["data_path"], 0.0) + e["projected_paper_seconds"]
    report = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
        or platform.machine(),
        "device_type": dev.type, "torch": torch.__version__, "dataset": dataset, "ir": ir,
        "dataset_size": len(bench_data(dataset, ir)), "peak_tflops_assumed": peak_tflops,
        "timing": {"warmup_steps": warmup, "windows": windows, "steps_per_window": steps,
                   "statistic": "median window"},
        "entries": entries,
        "projected_paper_seconds": totals,
    }
    if out is not None:
        atomic_write_json(out, report)
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    """One human line per entry."""
    lines = [f"{report['device']} ({report['device_type']}), {report['dataset']} ir={report['ir']} "
             f"({report['dataset_size']} images)"]
    for e in report["entries"]:
        lines.append(
            f"{e['method']:<20} {e['phase']:<8} {e['data_path']:<9} batch {e['batch_size']:>4}: "
            f"{e['images_per_s']:9.0f} img/s  {e['ms_per_step']:8.1f} ms/step  "
            f"peak {e['peak_memory_bytes'] / 2**30:5.2f} GiB  "
            f"floor {100 * (e['fraction_of_floor'] or 0):4.1f}%  "
            f"x{(e['speedup_vs_reference'] or float('nan')):.2f} vs reference  "
            f"paper budget {e['projected_paper_seconds'] / 60:7.1f} min")
    for method, per_path in report["projected_paper_seconds"].items():
        lines.append(f"{method}: whole paper budget " + ", ".join(
            f"{path} {seconds / 60:.1f} min" for path, seconds in per_path.items()))
    return lines
