"""The contract every method plugin must meet, checked on tiny synthetic data on CPU.

`harness test [--method M]` runs these checks for one's own plugin (like `benchopt test`); the
test suite runs them for every registered method. Each check raises `AssertionError` with what
is wrong, or returns a short note of what it saw.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness.config import CellConfig
from harness.evaluate import evaluate_cell
from harness.hostsync import HostSyncRecorder
from harness.method import TrainableMethod
from harness.registry import method_class

DATASET = "synthetic"


def contract_cell(name: str, run_dir: Path, seed: int = 3, device: str = "cpu") -> CellConfig:
    """The method's test budget on the `synthetic` dataset, two eval seeds (CPU by default)."""
    params = method_class(name).resolve_params(DATASET, budget="test")
    return CellConfig(method=name, dataset=DATASET, ir=10, seed=seed, params=params,
                      eval_seeds="first2", protocol={"n_init": 2, "max_iter": 50}, device=device,
                      run_dir=str(run_dir))


def check_metadata(name: str, workdir: Path) -> str:
    """Description, integer version, idempotent parameter resolution, a test budget of >= 2 epochs."""
    cls = method_class(name)
    assert cls.description, "set the class attribute `description`"
    assert isinstance(cls.version, int), "`version` must be an int (bump it when results change)"
    assert all(isinstance(v, int) and v > 0 for v in cls.version_bumps.values()), \
        "`version_bumps` maps datasets to positive ints"
    unknown = set(cls.optional_params) - {f.name for f in dataclasses.fields(cls.Params)}
    assert not unknown, f"`optional_params` names no parameter: {sorted(unknown)}"
    params = cls.resolve_params(DATASET, budget="test")
    assert cls.resolve_params(DATASET, params) == params, "resolving the params twice changes them"
    if issubclass(cls, TrainableMethod):
        assert params["epochs"] >= 2, "`test_params` needs epochs >= 2 (the resume check stops after 1)"
    return f"{len(params)} params"


def check_train_embed_evaluate(name: str, workdir: Path) -> str:
    """Train the test budget, embed (finite features, one row per image) and evaluate."""
    cfg = contract_cell(name, workdir / "run")
    method = method_class(name)()
    method.train(cfg, workdir / "run", resume=False)
    features = method.embed(cfg, workdir / "run", "lt_train")
    assert features, "embed returned no feature kinds"
    sizes = {kind: f.shape for kind, f in features.items()}
    n = next(iter(features.values())).shape[0]
    for kind, f in features.items():
        assert f.ndim == 2 and f.shape[0] == n, f"features '{kind}' have shape {f.shape}"
        assert np.all(np.isfinite(f)), f"features '{kind}' are not all finite"
    metrics = evaluate_cell(method, cfg, workdir / "run")
    acc = metrics["variants"][metrics["primary"]]["metrics"]["acc"]
    assert 0.0 <= acc <= 1.0, f"ACC {acc} outside [0, 1]"
    return f"features {sizes}, ACC {acc:.3f}"


class _Stopped(Exception):
    pass


def train_interrupted(cls: type[TrainableMethod], cfg: CellConfig, run_dir: Path,
                      stop_after: int = 1) -> None:
    """Train a fresh `cls()` until the checkpoint of epoch `stop_after` is on disk, then stop
    (as a killed job would)."""
    method = cls()
    save = method.save_checkpoint

    def save_then_stop() -> None:
        save()
        if method.epoch_done == stop_after:
            raise _Stopped

    method.save_checkpoint = save_then_stop  # type: ignore[method-assign]
    try:
        method.train(cfg, run_dir, resume=False)
    except _Stopped:
        return
    raise AssertionError(f"training ended before the checkpoint of epoch {stop_after}")


def check_exact_resume(name: str, workdir: Path) -> str:
    """Stopped after its first checkpoint and resumed, a run embeds exactly as an uninterrupted one."""
    cls = method_class(name)
    if not issubclass(cls, TrainableMethod):
        return "not trainable: nothing to resume"
    straight_cfg = contract_cell(name, workdir / "straight")
    straight = cls()
    straight.train(straight_cfg, workdir / "straight", resume=False)
    expected = straight.embed(straight_cfg, workdir / "straight", "lt_train")
    cfg = contract_cell(name, workdir / "stopped")
    train_interrupted(cls, cfg, workdir / "stopped")
    resumed = cls()
    resumed.train(cfg, workdir / "stopped", resume=True)
    got = resumed.embed(cfg, workdir / "stopped", "lt_train")
    assert got.keys() == expected.keys(), f"feature kinds differ: {list(got)} vs {list(expected)}"
    for kind in expected:
        if not np.allclose(got[kind], expected[kind], atol=1e-5):
            raise AssertionError(f"resumed features '{kind}' differ from an uninterrupted run: make "
                                 "every random draw come from the epoch's generator and "
                                 "checkpoint all method state in `extra_state`")
    return f"resumed after epoch 1 of {cfg.params['epochs']}: features equal"


def contract_method(name: str, run_dir: Path, device: str = "cpu",
                    **overrides: object) -> TrainableMethod:
    """A trainable method set up on its contract cell, with parameter overrides."""
    cfg = contract_cell(name, run_dir, device=device)
    cfg = dataclasses.replace(cfg, params={**cfg.params, **overrides})
    method = method_class(name)()
    method.setup(cfg, run_dir)
    return method


def check_no_host_sync(name: str, workdir: Path) -> str:
    """Training steps (data, augmentation, step, update) need no value on the host.

    Checked in the first and the last epoch of the test budget. Adam's step counters are
    exempt: the fused CUDA Adam the harness uses keeps them on the device.
    """
    cls = method_class(name)
    if not issubclass(cls, TrainableMethod):
        return "not trainable: no training step"
    method = contract_method(name, workdir / "sync", batch_size=16)
    for epoch in sorted({1, method.p.epochs}):
        gen = torch.Generator().manual_seed(epoch)
        method.model.train()
        method.on_epoch_start(epoch, gen)  # once per epoch (k-means, masks): may sync
        batches = method._batches(epoch, gen)
        method.take_step(*next(batches), epoch, gen)  # creates the optimiser state
        counters = frozenset(id(s["step"]) for s in method.optimizer.state.values() if "step" in s)
        with HostSyncRecorder(counters) as recorder:
            for _ in range(2):
                method.take_step(*next(batches), epoch, gen)
        assert not recorder.syncs, (f"epoch {epoch}: host syncs {sorted(set(recorder.syncs))}; "
                                    "keep values on the device (torch.where, not if/item)")
    return f"epochs {sorted({1, method.p.epochs})}: none"


CHECKS: dict[str, Callable[[str, Path], str]] = {
    "metadata": check_metadata,
    "train_embed_evaluate": check_train_embed_evaluate,
    "exact_resume": check_exact_resume,
    "no_host_sync": check_no_host_sync,
}


@dataclass(frozen=True)
class CheckResult:
    """One check of one method."""

    method: str
    check: str
    ok: bool
    detail: str
    seconds: float


def run_contract(names: list[str], workdir: Path | None = None) -> list[CheckResult]:
    """Run every check for each method; a failure is recorded and the other checks go on."""
    results = []
    with tempfile.TemporaryDirectory(prefix="harness-test-") as tmp:
        root = Path(workdir or tmp)
        for name in names:
            method_class(name)  # an unknown name fails here, with the nearest names
            for check, fn in CHECKS.items():
                t0 = time.time()
                try:
                    ok, detail = True, fn(name, root / name / check)
                except AssertionError as exc:
                    ok, detail = False, str(exc)
                except Exception as exc:  # the check's verdict, not a crash of the command
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                results.append(CheckResult(name, check, ok, detail, time.time() - t0))
    return results
