"""Generated contract tests: every registered method trains, resumes and evaluates on `synthetic`.

Each method runs its tiny `test_params` budget. Resume is checked by stopping a run right after
its first checkpoint and finishing it with a fresh instance: its features must equal those of an
uninterrupted run (each epoch reseeds from the cell seed, so training is replayable).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.config import CellConfig
from harness.method import TrainableMethod
from harness.registry import list_methods, method_class
from harness.store import cell_state, read_json

METHODS = list_methods()


class StopAfterFirstCheckpoint(Exception):
    pass


def cell(name: str, run_dir: Path) -> CellConfig:
    cls = method_class(name)
    return CellConfig(method=name, dataset="synthetic", ir=10, seed=3,
                      params=cls.resolve_params("synthetic", budget="test"), device="cpu",
                      run_dir=str(run_dir))


@pytest.mark.parametrize("name", METHODS)
def test_metadata(name: str) -> None:
    cls = method_class(name)
    assert cls.description and isinstance(cls.version, int)
    params = cls.resolve_params("synthetic", budget="test")
    assert cls.resolve_params("synthetic", params) == params  # resolution is idempotent


@pytest.mark.parametrize("name", [m for m in METHODS
                                  if issubclass(method_class(m), TrainableMethod)])
def test_resume_from_mid_run_checkpoint_is_exact(name: str, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cls = method_class(name)
    straight = tmp_path / "straight"
    cfg = cell(name, straight)
    assert cfg.params["epochs"] >= 2, "test_params must have at least 2 epochs to test resume"
    reference = cls()
    reference.train(cfg, straight, resume=False)
    expected = reference.embed(cfg, straight, "lt_train")

    stopped = tmp_path / "stopped"
    cfg2 = cell(name, stopped)
    original = TrainableMethod.save_checkpoint

    def save_then_stop(self: TrainableMethod) -> None:
        original(self)
        raise StopAfterFirstCheckpoint

    monkeypatch.setattr(TrainableMethod, "save_checkpoint", save_then_stop)
    with pytest.raises(StopAfterFirstCheckpoint):
        cls().train(cfg2, stopped, resume=False)
    monkeypatch.setattr(TrainableMethod, "save_checkpoint", original)
    resumed = cls()
    resumed.train(cfg2, stopped, resume=True)
    assert resumed.epoch_done == cfg.params["epochs"]
    got = resumed.embed(cfg2, stopped, "lt_train")
    assert got.keys() == expected.keys()
    for kind in expected:
        assert np.all(np.isfinite(got[kind]))
        np.testing.assert_allclose(got[kind], expected[kind], atol=1e-5, err_msg=kind)


def test_every_method_runs_through_the_pipeline(tmp_path: Path, runs_dir: Path) -> None:
    grid = tmp_path / "contract.yaml"
    grid.write_text(f"""
name: contract
budget: test
fixed: {{eval_seeds: first2, protocol: {{n_init: 2, max_iter: 30}}}}
grid: {{method: [{', '.join(METHODS)}], dataset: [synthetic], ir: [10], seed: [0]}}
""")
    rc = main(["run", "--grid", str(grid), "--executor", "debug", "--runs-dir", str(runs_dir),
               "--device", "cpu"])
    dirs = sorted(p.parent for p in (runs_dir / "contract").glob("*/*/*/config.yaml"))
    failed = {d.parts[-3]: read_json(d / "status.json").get("error") for d in dirs
              if cell_state(d) != "completed"}
    assert rc == 0 and not failed, failed
    assert {d.parts[-3] for d in dirs} == set(METHODS)
    for d in dirs:
        metrics = read_json(d / "metrics.json")
        primary = metrics["variants"][metrics["primary"]]
        assert primary["protocol"]["split"] == "lt_train"
        assert 0.0 <= primary["metrics"]["acc"] <= 1.0 and len(primary["per_class_acc"]) == 10
