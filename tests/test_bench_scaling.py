"""`harness bench --world-size N`: 1 vs N ranks of a training step (gloo processes on CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.cli import main


def test_two_gloo_ranks_are_timed_against_one(tmp_path: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "--world-size", "2", "--device", "cpu", "--method", "simclr",
                 "--dataset", "synthetic", "--batch", "16", "--warmup", "1", "--windows", "2",
                 "--steps", "1", "--out", str(tmp_path)]) == 0
    (out,) = tmp_path.glob("cpu-*cores-scaling2.json")
    report = json.loads(out.read_text())
    assert report["kind"] == "scaling" and report["world_sizes"] == [1, 2]
    one, two = report["entries"]
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert (one["batch_size"], two["batch_size"], two["batch_per_rank"]) == (16, 16, 8)
    assert one["speedup_vs_1"] == 1.0 and two["backend"] == "gloo"
    assert two["speedup_vs_1"] == pytest.approx(two["images_per_s"] / one["images_per_s"])
    assert all(e["images_per_s"] > 0 and len(e["ms_per_step_windows"]) == 2
               for e in (one, two))
    assert "world  2 x batch    8" in capsys.readouterr().out


def test_more_ranks_than_gpus_is_refused_in_one_line(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main(["bench", "--world-size", "2", "--device", "cuda", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--world-size 2 needs 2 GPUs but this machine has 1" in err and "--device cpu" in err
    assert not any(tmp_path.iterdir())
