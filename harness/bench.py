"""`harness bench`: time one training step of a method in both data paths, JSON out.

For each method and data path (`fast`: uint8 data and augmentation on the device; `reference`:
torchvision CPU transforms in a DataLoader) it times the full step -- augmentation, forward,
backward, optimiser -- as the median of several synchronised windows after warm-up, and reports
images/s, ms/step, peak memory, the FLOP floor at a given peak throughput and the fraction of it
reached, and the projected time of the method's paper budget on the chosen dataset size.
Random uint8 images of the dataset's shape stand in for the data, so no files are needed.
Both paths use the same model settings (AMP, channels-last, compile), so their ratio is the data
path's effect alone; the reference loader uses `reference_workers` processes (8 by default, the
usual research set-up), recorded in the JSON with the machine's CPU count. `targets` compares
the fast path with the acceptance figures of issue 7 (meaningful for the paper network on a GPU).
"""

from __future__ import annotations

import os
import platform
import re
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
from harness.method import TrainableMethod, resolve_device
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
        method.take_step(*next(stream), epoch, gen)

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
    method.model.train()
    method.on_epoch_start(epoch, gen)
    views = next(iter(method._batches(epoch, gen)))
    with FlopCounterMode(display=False) as counter:
        method.take_step(*views, epoch, gen)
    return float(counter.get_total_flops())


def _setup_method(cls: type[TrainableMethod], name: str, dataset: str, ir: Any, params: dict,
                  device: torch.device, data: LTData) -> TrainableMethod:
    cfg = CellConfig(method=name, dataset=dataset, ir=ir, seed=0, params=params, device=str(device))
    method = cls()
    method.setup_with_data(cfg, Path("."), data)
    return method


def phases(method: TrainableMethod, paper: dict) -> list[tuple[str, int, int]]:
    """(phase, an epoch of it in this run, its epochs in the paper budget)."""
    if hasattr(method, "bench_phases"):
        return method.bench_phases(paper)
    return [("train", 1, paper["epochs"])]


def step_overrides(cls: type[TrainableMethod], size: str, batch: int | None) -> dict[str, Any]:
    """Params over the paper's: the test network unless `size` is paper, and `batch`."""
    overrides = {} if size == "paper" else {k: v for k, v in cls.test_params.items()
                                            if k not in ("epochs", "warmup_epochs")}
    if batch:
        overrides["batch_size"] = batch
    return overrides


def bench_method(name: str, *, device: str, dataset: str, ir: Any, batch: int | None,
                 size: str, paths: list[str], warmup: int, windows: int, steps: int,
                 peak_tflops: float, compile: bool = False,
                 reference_workers: int = 8) -> list[dict[str, Any]]:
    """Benchmark entries (one per data path and training phase) for one method."""
    cls = method_class(name)
    if not issubclass(cls, TrainableMethod):
        raise HarnessError(f"method '{name}' has no training step to benchmark")
    paper = cls.resolve_params(dataset)
    overrides = step_overrides(cls, size, batch)
    data = bench_data(dataset, ir)
    dev = resolve_device(device)
    # FLOPs do not depend on the data path or on compilation: count them once, eagerly (the
    # counter sees aten ops, not the fused kernels of a compiled graph)
    counter = _setup_method(cls, name, dataset, ir, cls.resolve_params(dataset, overrides), dev, data)
    flops = {phase: step_flops(counter, epoch) for phase, epoch, _ in phases(counter, paper)}
    del counter
    entries = []
    for path in paths:
        params = cls.resolve_params(dataset, {**overrides, "data_path": path, "compile": compile,
                                              "num_workers": reference_workers})
        method = _setup_method(cls, name, dataset, ir, params, dev, data)
        for phase, epoch, n_epochs in phases(method, paper):
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            times = time_steps(method, epoch, warmup, windows, steps)
            sec = statistics.median(times)
            b = method.p.batch_size
            images_per_s = b / sec
            per_image = flops[phase] / b
            floor = peak_tflops * 1e12 / per_image if per_image else float("nan")
            entries.append({
                "method": name, "phase": phase, "data_path": path, "batch_size": b,
                "image_size": data.image_size, "ms_per_step": 1000 * sec,
                "ms_per_step_windows": [1000 * t for t in times],
                "images_per_s": images_per_s, "peak_memory_bytes": _peak_memory_bytes(dev),
                "flops_per_image": per_image, "flop_floor_images_per_s": floor,
                "fraction_of_floor": images_per_s / floor if per_image else None,
                "paper_epochs": n_epochs, "paper_batch_size": paper["batch_size"],
                # every image once per epoch at the measured rate (an epoch's last, smaller
                # batch costs in proportion to its size)
                "projected_paper_seconds": n_epochs * len(data) / images_per_s,
                "network": size, "device_type": dev.type, "amp": method.run_card()["amp"],
                "compile": method.compiled,
                "loader_workers": (min(reference_workers, os.cpu_count() or 1)
                                   if path == "reference" else None),
            })
        del method
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return entries


# Acceptance figures of issue 7 for the fast path (paper network, batch 512, on an H100).
TARGETS = {"speedup_vs_reference_min": 3.5, "fraction_of_floor_min": 0.5,
           "peak_memory_max_bytes": 8 * 2**30, "conmix_paper_budget_max_seconds": 600.0}


def check_targets(entries: list[dict[str, Any]], totals: dict[str, dict[str, float]]) -> dict[str, Any]:
    """Each fast-path entry and the ConMix paper budget against `TARGETS`."""
    checks = []
    for e in entries:
        if e["data_path"] != "fast":
            continue
        speedup, fraction = e["speedup_vs_reference"], e["fraction_of_floor"]
        checks.append({
            "method": e["method"], "phase": e["phase"],
            "speedup_ok": None if speedup is None else speedup >= TARGETS["speedup_vs_reference_min"],
            "floor_ok": None if fraction is None else fraction >= TARGETS["fraction_of_floor_min"],
            "memory_ok": e["peak_memory_bytes"] < TARGETS["peak_memory_max_bytes"],
        })
    conmix = totals.get("conmix", {}).get("fast")
    budget_ok = None if conmix is None else conmix <= TARGETS["conmix_paper_budget_max_seconds"]
    verdicts = [v for c in checks for k, v in c.items() if k.endswith("_ok")] + [budget_ok]
    applies = all(e["network"] == "paper" and e["device_type"] == "cuda" for e in entries)
    return {**TARGETS, "applies": applies, "entries": checks, "conmix_paper_budget_ok": budget_ok,
            "all_ok": all(v is not False for v in verdicts)}


def _dynamo_stats() -> dict[str, int]:
    """How much ran compiled: graphs built and graph breaks (0 and 0 without compile)."""
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def output_path(out: Path, report: dict[str, Any]) -> Path:
    """`out` itself, or `<out>/<device-name>[-tiny|-eval].json` when `out` is a folder."""
    if out.suffix == ".json":
        return out
    slug = re.sub(r"[^a-z0-9]+", "-", report["device"].lower()).strip("-")
    if report["device_type"] == "cpu":
        slug = f"cpu-{slug}-{report['cpu_count']}cores"
    if report.get("kind") == "eval_kmeans":
        return out / f"{slug}-eval.json"
    if report.get("kind") == "scaling":
        return out / f"{slug}-scaling{max(report['world_sizes'])}.json"
    network = "" if report["entries"] and report["entries"][0]["network"] == "paper" else "-tiny"
    return out / f"{slug}{network}.json"


def run_bench(methods: list[str], *, device: str = "auto", dataset: str = "cifar10", ir: Any = 10,
              batch: int | None = None, size: str | None = None,
              paths: tuple[str, ...] = ("fast", "reference"), warmup: int = 3, windows: int = 5,
              steps: int = 5, peak_tflops: float = 400.0, compile: bool | None = None,
              reference_workers: int = 8, out: Path | None = None) -> dict[str, Any]:
    """Benchmark several methods; writes JSON to `out` (a file, or a folder: named by device).

    `compile` None means on for CUDA, off for CPU (where inductor is not used).
    """
    for flag, value, least in (("batch", batch, 1), ("steps", steps, 1), ("windows", windows, 1),
                               ("warmup", warmup, 0), ("workers", reference_workers, 0)):
        if value is not None and value < least:
            raise HarnessError(f"--{flag} {value}: use a number >= {least}")
    unknown = sorted(set(paths) - {"fast", "reference"})
    if unknown or not paths:
        raise HarnessError(f"--paths {','.join(paths)}: data paths are fast and/or reference")
    dev = resolve_device(device)
    size = size or ("paper" if dev.type == "cuda" else "tiny")
    compile = dev.type == "cuda" if compile is None else compile
    entries = []
    for name in methods:
        entries += bench_method(name, device=device, dataset=dataset, ir=ir, batch=batch,
                                size=size, paths=list(paths), warmup=warmup, windows=windows,
                                steps=steps, peak_tflops=peak_tflops, compile=compile,
                                reference_workers=reference_workers)
    for e in entries:  # fast/reference speed-up measured in the same run
        ref = next((r for r in entries if r["method"] == e["method"] and r["phase"] == e["phase"]
                    and r["data_path"] == "reference"), None)
        e["speedup_vs_reference"] = e["images_per_s"] / ref["images_per_s"] if ref else None
    totals: dict[str, dict[str, float]] = {}
    for e in entries:  # a method's paper budget = the sum of its phases (ConMix: SDCLR + ConMix)
        per_path = totals.setdefault(e["method"], {})
        per_path[e["data_path"]] = per_path.get(e["data_path"], 0.0) + e["projected_paper_seconds"]
    report = {
        "device": device_name(dev), "device_type": dev.type, "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "dataset": dataset, "ir": ir,
        "dataset_size": len(bench_data(dataset, ir)), "peak_tflops_assumed": peak_tflops,
        "timing": {"warmup_steps": warmup, "windows": windows, "steps_per_window": steps,
                   "statistic": "median window"},
        "entries": entries,
        "projected_paper_seconds": totals,
        "targets": check_targets(entries, totals),
        "dynamo": _dynamo_stats(),
    }
    if out is not None:
        atomic_write_json(output_path(out, report), report)
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
    failed = [f"{c['method']}/{c['phase']} {k[:-3]}" for c in report["targets"]["entries"]
              for k, v in c.items() if k.endswith("_ok") and v is False]
    if report["targets"]["conmix_paper_budget_ok"] is False:
        failed.append("conmix paper budget")
    verdict = "all met" if not failed else "missed: " + ", ".join(failed)
    if not report["targets"]["applies"]:
        verdict += " (the targets are for the paper network on a GPU)"
    lines.append(f"issue-7 targets (fast path): {verdict}")
    return lines
