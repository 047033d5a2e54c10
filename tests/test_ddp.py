"""One cell on 2 gloo ranks (CPU): the same training as one process at the global batch."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from harness.errors import HarnessError
from harness.registry import method_class
from harness.threads import cpu_threads

from ddp_helpers import (blocks_on_rank, cell, checkpoint, fetch_on_rank, free_port, run_ranks,
                         spawn, start_ranks)

# Each: params of a few steps per epoch; propos's second epoch runs PSL, noise and k-means.
# Small LRs and few steps: the tiny test networks are chaotic. Float rounding alone (one
# process, 1 against 2 threads; SimCLR, batch 20, LR 1e-3) moves the loss by 1e-6 for 9 steps,
# then by 2e-3 at step 11, and the ranks' sums round differently, so past about 10 steps
# neither run is "the" answer to 1e-5. ConMix at batch 40 runs 2 x 4 steps.
CASES = {"simclr": {"epochs": 1, "batch_size": 20, "lr": 1e-3},
         "conmix": {"epochs": 2, "batch_size": 40, "lr": 1e-3},  # epoch 1 SDCLR, 2 ConMix
         "propos": {"epochs": 2, "batch_size": 16, "lr": 0.002},
         "hadis": {"epochs": 2, "batch_size": 16, "lr": 0.002},  # + HSD per device
         "dcl": {"epochs": 1, "batch_size": 20, "lr": 1e-4},
         # epoch 2: k-means switch to the DEC head, epoch 3: prior refresh
         "debiased_clustering": {"epochs": 3, "batch_size": 48, "lr": 1e-4},
         # upstream's CIFAR-20 path: both views as one batch per device, halves of all devices
         "propos_v2": {"method": "propos", "epochs": 2, "batch_size": 16, "lr": 0.002,
                       "v2": True, "symmetric": True, "data_resample": True,
                       "momentum_increase": True},
         # torchvision transforms per image in a DataLoader, each rank its share of the batch
         "simclr_reference": {"method": "simclr", "epochs": 1, "batch_size": 20, "lr": 1e-3,
                              "data_path": "reference"}}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_equal_one_process_at_the_global_batch(case: str, tmp_path: Path) -> None:
    params = dict(CASES[case])
    method = params.pop("method", case)
    ranked = cell(method, tmp_path / "ranks", 2, **params)
    # per-device BatchNorm (propos) becomes bn_group_size = batch / 2 on one process
    single = cell(method, tmp_path / "single", 1, **ranked.params)
    assert single.uid == ranked.uid  # world size is not part of the uid; the recipe is
    run_ranks(ranked)
    with cpu_threads(1):  # as each rank: the verdict must not depend on the test's threads
        loss_single = method_class(method)().train(single, Path(single.run_dir), False)["final_loss"]
    a, b = checkpoint(ranked.run_dir), checkpoint(single.run_dir)
    assert a["global_step"] == b["global_step"] >= 4
    # weights: absolute; BatchNorm running statistics (large, and the most sensitive to
    # rounding: variances of a few images): relative, 1e-4
    diffs = {k: ((v.double() - b["model"][k].double()).abs()
                 / b["model"][k].double().abs().clamp(min=1)).max().item()
             for k, v in a["model"].items() if v.is_floating_point()}
    weights = max((d, k) for k, d in diffs.items() if "running" not in k)
    stats = max((d, k) for k, d in diffs.items() if "running" in k)
    print(f"{method}: max difference ranks vs single: weights {weights}, running stats {stats}")
    assert weights[0] < 1e-5 and stats[0] < 1e-4, (weights, stats)
    loss_ranks = torch.load(Path(ranked.run_dir) / "summary.pt")["final_loss"]
    print(f"{method}: final loss ranks {loss_ranks:.8f} single {loss_single:.8f}")
    assert loss_ranks == pytest.approx(loss_single, abs=1e-5)

def test_each_rank_fetches_its_share_of_a_global_batch_from_the_holders() -> None:
    assert spawn(fetch_on_rank, 3) == [0, 0, 0]


def test_each_rank_holds_only_its_block_of_the_images(tmp_path: Path) -> None:
    cfg = cell("simclr", tmp_path / "run", 2)
    assert spawn(blocks_on_rank, 2, cfg.to_dict(), str(tmp_path)) == [0, 0]
    held = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    n = held[0]["subset"]
    assert [h["device"] for h in held] == [(n + 1) // 2, n // 2]
    # rank 0 keeps the whole host copy for the evaluation, rank 1 only its block
    assert [h["host"] for h in held] == [n, n // 2]


def test_stopped_and_resumed_two_rank_run_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    params = CASES["propos"]
    straight, stopped = (cell("propos", tmp_path / name, 2, **params) for name in ("a", "b"))
    run_ranks(straight)
    run_ranks(stopped, stop_after=1)
    assert checkpoint(stopped.run_dir)["epoch"] == 1
    run_ranks(stopped, resume=True)
    a, b = checkpoint(straight.run_dir), checkpoint(stopped.run_dir)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert torch.equal(a["extra"]["pseudo_labels"], b["extra"]["pseudo_labels"])
    # the same run resumed on one process is refused: its per-device state is per rank
    single = cell("propos", Path(stopped.run_dir), 1, **stopped.params)
    with pytest.raises(HarnessError, match="world_size 2, not 1"):
        method_class("propos")().train(single, Path(single.run_dir), True)


def test_a_rank_that_dies_mid_step_fails_the_other_within_the_timeout(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_DIST_TIMEOUT", "30")
    cfg = cell("simclr", tmp_path / "run", 2, **CASES["simclr"])
    t0 = time.time()
    procs = start_ranks(cfg, die_at_step=3)
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs][1] == 17
    assert procs[0].exitcode not in (None, 0)  # rank 0 raised, it did not hang
    assert time.time() - t0 < 90


def test_a_rank_whose_master_address_does_not_resolve_fails_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.distributed import Ranks, init_process_group

    monkeypatch.setenv("MASTER_ADDR", "no-such-node.invalid")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    t0 = time.time()
    with pytest.raises(HarnessError, match="cannot resolve MASTER_ADDR 'no-such-node.invalid'"):
        init_process_group(Ranks(1, 2), torch.device("cpu"))
    assert time.time() - t0 < 30  # not the rendezvous timeout


def test_local_executor_runs_a_two_rank_cell_and_reports_it(tmp_path: Path,
                                                            runs_dir: Path) -> None:
    from harness.cli import main
    from harness.store import read_status

    grid = tmp_path / "w2.yaml"
    grid.write_text("name: w2\nbudget: test\nfixed: {world_size: 2}\n"
                    "grid: {method: [simclr], dataset: [synthetic], ir: [10], seed: [0]}\n"
                    "methods: {simclr: {params: {epochs: 1, batch_size: 20}}}\n")
    assert main(["run", "--grid", str(grid), "--executor", "local", "--device", "cpu",
                 "--runs-dir", str(runs_dir)]) == 0
    run_dir = next((runs_dir / "w2" / "simclr").glob("*/seed0-*"))
    assert read_status(run_dir)["state"] == "completed"
    card = json.loads((run_dir / "metrics.json").read_text())["run_card"]
    assert card["world_size"] == 2 and card["batch_per_device"] == 10
    assert main(["report", "--grid", str(grid), "--runs-dir", str(runs_dir), "--no-figures",
                 "--out", str(tmp_path / "report")]) == 0
    assert "SimCLR" in (tmp_path / "report" / "w2.md").read_text()


def test_ranks_of_a_cell_rank0_does_not_train_exit_at_once(tmp_path: Path) -> None:
    """Rank 0 finds the cell busy (a live process holds its lock): it tells the other rank,
    which exits at once instead of waiting out the process-group timeout. The ranks run as
    plain processes, as SLURM tasks do (torchrun would also stop rank 1 when rank 0 exits)."""
    import os
    import subprocess
    import sys

    from harness.cell_lock import acquire
    from harness.config import write_config
    from harness.worker import EXIT_BUSY

    cfg = cell("simclr", tmp_path / "run", 2, **CASES["simclr"])
    write_config(cfg, Path(cfg.run_dir) / "config.yaml")
    env = {**os.environ, "HARNESS_DIST_TIMEOUT": "300", "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    command = [sys.executable, "-m", "harness.worker", str(Path(cfg.run_dir) / "config.yaml")]
    lock = acquire(Path(cfg.run_dir), "worker")  # this test process owns the cell
    try:
        t0 = time.time()
        procs = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for r in range(2)]
        codes = [p.wait(timeout=240) for p in procs]
        seconds = time.time() - t0
    finally:
        lock.release()
    assert codes == [EXIT_BUSY, 0]
    assert seconds < 120, seconds  # not the 300 s timeout
    assert not (Path(cfg.run_dir) / "ckpt").exists()


def test_a_corrupt_checkpoint_of_a_two_rank_cell_is_set_aside_and_every_rank_retrains(
        tmp_path: Path) -> None:
    """Rank 0 checks the checkpoint before it tells the other rank to resume from it."""
    import os
    import subprocess
    import sys

    from harness.config import write_config
    from harness.store import read_status

    cfg = cell("simclr", tmp_path / "run", 2, **CASES["simclr"])
    run_dir = Path(cfg.run_dir)
    write_config(cfg, run_dir / "config.yaml")
    (run_dir / "ckpt").mkdir()
    (run_dir / "ckpt" / "last.pt").write_bytes(b"not a checkpoint")
    env = {**os.environ, "HARNESS_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    command = [sys.executable, "-m", "harness.worker", str(run_dir / "config.yaml")]
    procs = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for r in range(2)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0]
    assert read_status(run_dir)["state"] == "completed"
    assert (run_dir / "ckpt" / "last.pt.corrupt").read_bytes() == b"not a checkpoint"
    assert checkpoint(run_dir)["epoch"] == CASES["simclr"]["epochs"]


def test_rank0_tells_the_ranks_to_resume_only_from_a_checkpoint_that_reads(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handshake itself (the end-to-end test above can pass by a race: rank 0 may move the
    file aside before rank 1 reads it)."""
    from harness.worker import RunCell

    class Trained:
        def train(self, cfg: object, run_dir: Path, resume: bool) -> dict[str, bool]:
            return {"resume": resume}

    told: list[tuple[bool, bool]] = []
    monkeypatch.setattr(RunCell, "_tell_ranks",
                        lambda self, cfg, train, resume=False: told.append((train, resume)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    cfg = cell("simclr", tmp_path / "run", 2)
    ckpt = Path(cfg.run_dir) / "ckpt" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"not a checkpoint")
    _, summary = RunCell(cfg.to_dict())._train(Trained, cfg, Path(cfg.run_dir))
    assert told == [(True, False)] and summary == {"resume": False}
    assert ckpt.with_name("last.pt.corrupt").exists() and not ckpt.exists()


def test_local_executor_gives_each_multi_rank_cell_gpus_of_its_own(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On 4 GPUs, cells on 2 ranks run 2 at a time on GPUs 0,1 and 2,3 (never shared)."""
    from types import SimpleNamespace

    from harness.executors.local import LocalExecutor

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    cells = [SimpleNamespace(cfg=cell("simclr", tmp_path / str(i), 2)) for i in range(3)]
    executor = LocalExecutor()
    executor.plan_slots(cells)  # type: ignore[arg-type]
    assert executor.max_parallel == 2
    visible = [executor._env(slot, cells[slot])["CUDA_VISIBLE_DEVICES"] for slot in range(2)]
    assert visible == ["0,1", "2,3"]
    one_rank = [SimpleNamespace(cfg=cell("simclr", tmp_path / "one", 1))]
    single = LocalExecutor()
    single.plan_slots(one_rank)  # type: ignore[arg-type]
    assert single.max_parallel == 4
    assert single._env(3, one_rank[0])["CUDA_VISIBLE_DEVICES"] == "3"  # type: ignore[arg-type]


def test_methods_without_data_parallel_training_refuse_several_ranks(tmp_path: Path) -> None:
    with pytest.raises(HarnessError, match="'kmeans' trains on one process; remove world_size 2"):
        cell("kmeans", tmp_path / "run", 2)
