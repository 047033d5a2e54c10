"""The shared training loop: bf16 vs fp32, the reference data path, OOM and bench output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.bench import check_targets, run_bench
from harness.config import CellConfig
from harness.contract import train_interrupted
from harness.errors import HarnessError, TrainingFailure
from harness.hostsync import HostSyncRecorder
from harness.method import Batch, TrainableMethod, resolve_device
from harness.registry import method_class


def tiny_cfg(run_dir: Path, **overrides: object) -> CellConfig:
    cls = method_class("simclr")
    params = cls.resolve_params("synthetic", dict(overrides), budget="test")
    return CellConfig(method="simclr", dataset="synthetic", ir=10, seed=0, params=params,
                      device="cpu", run_dir=str(run_dir))


def test_bf16_step_loss_matches_fp32(tmp_path: Path) -> None:
    losses = {}
    for amp in ("none", "bf16"):
        m = method_class("simclr")()
        m.setup(tiny_cfg(tmp_path, amp=amp), tmp_path)
        gen = torch.Generator().manual_seed(0)
        v1, v2, idx = next(m._batches(1, gen))
        losses[amp] = m.training_step(Batch(v1, v2, idx, 1, 1, gen)).item()
    assert losses["bf16"] == pytest.approx(losses["none"], rel=1e-2)


def test_conmix_bench_times_both_phases(tmp_path: Path) -> None:
    report = run_bench(["conmix"], device="cpu", dataset="synthetic", ir=10, batch=16,
                       paths=("fast",), warmup=1, windows=1, steps=1)
    phases = {e["phase"]: e for e in report["entries"]}
    assert set(phases) == {"sdclr", "conmix"}
    assert (phases["sdclr"]["paper_epochs"], phases["conmix"]["paper_epochs"]) == (200, 800)
    sdclr = phases["sdclr"]
    assert sdclr["projected_paper_seconds"] == pytest.approx(
        200 * report["dataset_size"] / sdclr["images_per_s"])
    total = report["projected_paper_seconds"]["conmix"]["fast"]
    assert total == pytest.approx(sum(e["projected_paper_seconds"] for e in phases.values()))


def test_reference_data_path_trains(tmp_path: Path) -> None:
    m = method_class("simclr")()
    summary = m.train(tiny_cfg(tmp_path, data_path="reference", num_workers=0), tmp_path, False)
    assert summary["steps"] == 2 * m.steps_per_epoch and summary["final_loss"] > 0
    lines = (tmp_path / "train_log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["epoch"] == 2


def test_training_seconds_add_up_over_a_resume(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, epochs=2)
    train_interrupted(method_class("simclr"), cfg, tmp_path, stop_after=1)
    first = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=False)["train_seconds"]
    assert first > 0
    summary = method_class("simclr")().train(cfg, tmp_path, resume=True)
    assert summary["seconds"] == pytest.approx(first + summary["attempt_seconds"], abs=1e-3)


def test_out_of_memory_is_reported_with_the_batch_size(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def oom(self: TrainableMethod, batch: Batch) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(method_class("simclr"), "training_step", oom)
    with pytest.raises(TrainingFailure) as info:
        method_class("simclr")().train(tiny_cfg(tmp_path, batch_size=48), tmp_path, False)
    assert "out of memory at batch size 48" in str(info.value)
    assert info.value.details["batch_size"] == 48 and info.value.details["epoch"] == 1


def test_bench_cpu_json(tmp_path: Path) -> None:
    report = run_bench(["simclr"], device="cpu", dataset="synthetic", ir=10, batch=16,
                       warmup=1, windows=2, steps=1, reference_workers=1, out=tmp_path)
    (out,) = tmp_path.glob("cpu-*cores-tiny.json")  # a folder: the file is named after the device
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    paths = {e["data_path"]: e for e in report["entries"]}
    assert set(paths) == {"fast", "reference"}
    for e in paths.values():
        assert e["images_per_s"] > 0 and e["ms_per_step"] > 0 and e["flops_per_image"] > 0
        assert e["peak_memory_bytes"] > 0 and e["projected_paper_seconds"] > 0
        assert e["compile"] is False  # compile is off by default on CPU
    assert paths["reference"]["speedup_vs_reference"] == pytest.approx(1.0)
    assert (paths["reference"]["loader_workers"], paths["fast"]["loader_workers"]) == (1, None)
    assert paths["fast"]["flops_per_image"] == paths["reference"]["flops_per_image"]
    targets = report["targets"]
    assert targets["applies"] is False  # tiny network on CPU
    (check,) = targets["entries"]
    assert check["speedup_ok"] == (paths["fast"]["speedup_vs_reference"] >= 3.5)


@pytest.mark.parametrize("name", ["sdclr", "byol", "propos", "hadis", "dcl", "debiased_clustering"])
def test_bench_entry_for_every_trainable_method(name: str) -> None:
    report = run_bench([name], device="cpu", dataset="synthetic", ir=10, batch=16,
                       paths=("fast",), warmup=1, windows=1, steps=1)
    (entry,) = report["entries"]
    assert entry["method"] == name and entry["images_per_s"] > 0 and entry["flops_per_image"] > 0


def test_compile_flag_on_cpu_runs_eagerly_with_a_warning(tmp_path: Path) -> None:
    m = method_class("simclr")()
    with pytest.warns(UserWarning, match="CUDA only"):
        summary = m.train(tiny_cfg(tmp_path, compile=True, epochs=1), tmp_path, False)
    assert summary["steps"] == m.steps_per_epoch


@pytest.mark.parametrize("name", ["simclr", "sdclr", "conmix"])
def test_conmix_recipe_schedule_cifar10_ir10(name: str) -> None:
    """conmix.md section 4: I = 40 steps per epoch -> lr(1) = 0.5/400, lr(400) = 0.5, lr(T) = 1e-6."""
    m = method_class(name)()
    m.p, m.steps_per_epoch = m.Params(), 40
    assert m.lr_at(1) == pytest.approx(0.5 / 400)
    assert m.lr_at(400) == pytest.approx(0.5)
    assert m.lr_at(40_000) == pytest.approx(1e-6)


def test_bench_targets_of_issue_7() -> None:
    def entry(phase: str, path: str, images_per_s: float, memory_gib: float) -> dict:
        return {"method": "conmix", "phase": phase, "data_path": path, "network": "paper",
                "device_type": "cuda", "images_per_s": images_per_s,
                "speedup_vs_reference": images_per_s / 8500, "fraction_of_floor": images_per_s / 60000,
                "peak_memory_bytes": memory_gib * 2**30}

    good = [entry("sdclr", "fast", 34000, 5.0), entry("sdclr", "reference", 8500, 5.0)]
    result = check_targets(good, {"conmix": {"fast": 590.0}})
    assert result["applies"] and result["all_ok"]
    slow = [entry("sdclr", "fast", 25000, 9.0), entry("sdclr", "reference", 8500, 5.0)]
    result = check_targets(slow, {"conmix": {"fast": 820.0}})
    (check,) = result["entries"]
    assert (check["speedup_ok"], check["floor_ok"], check["memory_ok"]) == (False, False, False)
    assert result["conmix_paper_budget_ok"] is False and not result["all_ok"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_a_missing_gpu_is_a_clear_error_before_anything_is_written(
        runs_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    for device in ("cuda", "cuda:1"):
        with pytest.raises(HarnessError, match="no usable CUDA GPU; use --device cpu"):
            resolve_device(device)
    with pytest.raises(HarnessError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    rc = main(["run", "--grid", "smoke", "--device", "cuda", "--executor", "debug",
               "--runs-dir", str(runs_dir)])
    assert rc == 2 and "no usable CUDA GPU" in capsys.readouterr().err
    assert not any(runs_dir.iterdir())
    assert main(["bench", "--device", "cuda", "--out", str(runs_dir)]) == 2


@pytest.mark.parametrize("flag", [["--batch", "0"], ["--steps", "0"], ["--windows", "0"],
                                  ["--warmup", "-1"], ["--paths", "fast,slow"]])
def test_bench_refuses_counts_out_of_range(flag: list[str], tmp_path: Path,
                                           capsys: pytest.CaptureFixture) -> None:
    from harness.cli import main

    try:
        code = main(["bench", "--device", "cpu", *flag, "--out", str(tmp_path)])
    except SystemExit as exc:  # counts are refused by argparse, the paths by the command
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and flag[0] in err and flag[1] in err
    assert len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_the_loop_syncs_per_epoch_not_per_step(tmp_path: Path) -> None:
    counts = {}
    for batch_size in (16, 8):  # twice the steps
        cfg = tiny_cfg(tmp_path / str(batch_size), batch_size=batch_size, epochs=1, log_every=10**6)
        with HostSyncRecorder() as recorder:
            method_class("simclr")().train(cfg, tmp_path / str(batch_size), resume=False)
        counts[batch_size] = len(recorder.syncs)
    assert counts[16] == counts[8]  # set-up and the epoch end (NaN check, mean loss) only
