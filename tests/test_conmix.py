"""ConMix (conmix.md): the loss and its grouping, tags, phase switch, two-pass gradient, schedule,
configs, features, training and resume (mid-warm-up and mid-ConMix) on synthetic and digits."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from grad_helpers import GradRecorder
from resume_helpers import assert_resume_matches

from harness.config import CellConfig
from harness.data.augment import augment
from harness.method import Batch
from harness.nn.losses import nt_xent
from harness.registry import method_class

ConMix = method_class("conmix")
plugin = sys.modules[ConMix.__module__]
conmix_loss, tag_groups, draw_tags = plugin.conmix_loss, plugin.tag_groups, plugin.draw_tags


def cell(tmp_path: Path, dataset: str = "synthetic", **overrides) -> CellConfig:
    """A test-budget cell at IR 100 and 8 px (95 synthetic / 433 digits images): cheap on CPU."""
    return CellConfig(method="conmix", dataset=dataset, ir=100, seed=0, device="cpu",
                      params=ConMix.resolve_params(dataset, overrides, budget="test"),
                      data={"image_size": 8}, data_root=str(tmp_path / "data"))


def new_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def reference_loss(z1: torch.Tensor, z2: torch.Tensor, tags: torch.Tensor, tau: float) -> float:
    """The spec's equations written out directly (float64, explicit groups, plain exp)."""
    z1, z2 = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
    groups = [tags == k for k in torch.unique(tags)]
    u = [torch.stack([F.normalize(z[g].mean(0), dim=0) for g in groups]) for z in (z1, z2)]
    m, total = len(groups), 0.0
    for v in (0, 1):
        for k in range(m):
            pos = torch.exp(u[v][k] @ u[1 - v][k] / tau)
            neg = sum(torch.exp(u[v][k] @ u[w][j] / tau)
                      for j in range(m) if j != k for w in (0, 1))
            total -= torch.log(pos / (pos + neg)).item()
    return total / (2 * m)


def random_batch(n: int = 24, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


# -- the loss (spec 2.2, 9) -----------------------------------------------------------------
def test_singleton_groups_equal_nt_xent() -> None:
    z1, z2 = random_batch()
    tags = torch.arange(24)  # M = N, a_i = i
    assert abs(conmix_loss(z1, z2, tags, 0.2).item() - nt_xent(z1, z2, 0.2).item()) < 1e-6


def test_matches_the_equations() -> None:
    z1, z2 = random_batch()
    tags = torch.randint(6, (24,), generator=torch.Generator().manual_seed(3))
    assert abs(conmix_loss(z1, z2, tags, 0.2).item() - reference_loss(z1, z2, tags, 0.2)) < 1e-5


def test_weight_matrix_and_group_count() -> None:
    tags = torch.tensor([3, 7, 3, 0, 7, 3, 9])
    w, valid = tag_groups(tags)
    assert int(valid.sum()) == len(torch.unique(tags))  # M'
    torch.testing.assert_close(w[valid].sum(1), torch.ones(4))
    assert torch.all(w[~valid] == 0)
    for row in w[valid]:
        members = row > 0
        assert len(set(tags[members].tolist())) == 1
        size = int(members.sum())
        torch.testing.assert_close(row[members], torch.full((size,), 1 / size))
        assert int(members.sum()) == int((tags == tags[members][0]).sum())


def test_empty_tag_ids_change_nothing() -> None:
    z1, z2 = random_batch()
    tags = torch.randint(5, (24,), generator=torch.Generator().manual_seed(1))
    spread = tags * 17 + 4  # same partition, tag ids in [0, 100) with most ids empty
    torch.testing.assert_close(conmix_loss(z1, z2, spread, 0.2), conmix_loss(z1, z2, tags, 0.2))


def test_group_of_identical_embeddings_is_that_embedding() -> None:
    z = torch.randn(1, 8).repeat(5, 1) * torch.tensor([[1.0], [2.0], [0.5], [3.0], [1.5]])
    u, valid = plugin.group_vectors(z, torch.zeros(5, dtype=torch.long))
    torch.testing.assert_close(u[valid][0], F.normalize(z[0], dim=0))


def test_invariant_to_renaming_tags_and_joint_permutation() -> None:
    z1, z2 = random_batch()
    g = torch.Generator().manual_seed(2)
    tags = torch.randint(8, (24,), generator=g)
    base = conmix_loss(z1, z2, tags, 0.2)
    renamed = torch.randperm(8, generator=g)[tags]
    torch.testing.assert_close(conmix_loss(z1, z2, renamed, 0.2), base)
    perm = torch.randperm(24, generator=g)
    torch.testing.assert_close(conmix_loss(z1[perm], z2[perm], tags[perm], 0.2), base)


def test_stable_at_low_temperature() -> None:
    z1, _ = random_batch()
    z1.requires_grad_(True)
    loss = conmix_loss(z1, z1.detach().clone(), torch.arange(24) % 7, 0.01)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z1.grad).all()


def test_tags_reproducible_and_in_range() -> None:
    a = draw_tags(512, 100, torch.Generator().manual_seed(5))
    b = draw_tags(512, 100, torch.Generator().manual_seed(5))
    c = draw_tags(512, 100, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.long and a.min() >= 0 and a.max() < 100
    cpu = torch.device("cpu")
    g1, g2 = plugin.tag_generator(0, 7, cpu), plugin.tag_generator(0, 7, cpu)
    torch.rand(3, generator=torch.Generator().manual_seed(0))  # other streams do not interfere
    assert torch.equal(draw_tags(64, 100, g1), draw_tags(64, 100, g2))
    assert not torch.equal(draw_tags(64, 100, plugin.tag_generator(0, 8, cpu)),
                           draw_tags(64, 100, plugin.tag_generator(0, 7, cpu)))


def _rank_tags(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    tags = draw_tags(64, 100, plugin.tag_generator(3, 5, torch.device("cpu")))
    gathered = [torch.empty_like(tags) for _ in range(2)]
    dist.all_gather(gathered, tags)
    queue.put((rank, bool(torch.equal(gathered[0], gathered[1]))))
    dist.destroy_process_group()


def test_ddp_ranks_draw_identical_tags() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_rank_tags, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert results == {0: True, 1: True}


# -- method: gradients, phase switch, schedule, configs ------------------------------------
def test_two_pass_gradient_equals_single_pass_and_tags_shared(tmp_path: Path, monkeypatch) -> None:
    m = ConMix()
    m.setup(cell(tmp_path), tmp_path)
    gen = torch.Generator().manual_seed(0)
    recipe, x = m.augment_recipe(), m.images[:32]
    batch = Batch(augment(x, recipe, gen), augment(x, recipe, gen), torch.arange(32), 2, 1, gen)
    state = copy.deepcopy(m.model.state_dict())
    seen: list[torch.Tensor] = []
    group_vectors = plugin.group_vectors
    def capture(z: torch.Tensor, tags: torch.Tensor):
        seen.append(tags)
        return group_vectors(z, tags)

    monkeypatch.setattr(plugin, "group_vectors", capture)
    grads = {}
    for two_pass in (False, True):
        m.model.load_state_dict(state)
        m.p = dataclasses.replace(m.p, two_pass=two_pass)
        m.optimizer = GradRecorder(m.model)
        m.on_epoch_start(2, gen)  # epoch 2 > warm-up 1: the ConMix step, fresh tag stream
        m.training_step(batch)
        grads[two_pass] = m.optimizer.grads
    assert len(seen) == 6  # 2 views x (1 single pass + 2 two-pass calls)
    assert all(torch.equal(t, seen[0]) for t in seen)  # one tag vector for both views
    assert len(torch.unique(seen[0])) > 1 and len(torch.unique(seen[0])) < 32
    assert sum(g is not None for g in grads[False].values()) > 0
    for name, g in grads[False].items():
        assert (g is None) == (grads[True][name] is None), name
        if g is not None:
            torch.testing.assert_close(grads[True][name], g, atol=1e-5, rtol=1e-5, msg=name)
    assert all(grads[False][n] is None for n in grads[False] if ".prune." in n)  # dense path only


def test_paper_configs() -> None:
    for dataset in ("cifar10", "cifar20", "stl10", "tinyimagenet", "imagenet_lt"):
        p = ConMix.resolve_params(dataset)
        assert (p["num_tags"], p["temperature"], p["warmup_epochs_sdclr"], p["epochs"]) == \
            (100, 0.2, 200, 1000)
        assert (p["lr"], p["weight_decay"], p["momentum"], p["batch_size"]) == (0.5, 1e-4, 0.9, 512)
        assert (p["warmup_epochs"], p["final_lr"], p["prune_percent"], p["proj_dim"]) == \
            (10, 1e-6, 0.9, 128)
        assert p["two_pass"] is False
    assert ConMix.resolve_params("cifar10")["stem"] == "cifar"
    assert ConMix.resolve_params("stl10")["stem"] == "imagenet"
    assert ConMix.resolve_params("imagenet_lt")["arch"] == "resnet50"
    assert ConMix.resolve_params("cifar10")["arch"] == "resnet18"


def test_bad_params_raise(tmp_path: Path) -> None:
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match="num_tags"):
        ConMix().setup(cell(tmp_path, num_tags=0), tmp_path)


# -- training, phase switch, features, resume -----------------------------------------------
@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted run (epochs 1-2 SDCLR, 3-4 ConMix) that records every step."""
    tmp_path = tmp_path_factory.mktemp("conmix")
    cfg = cell(tmp_path, epochs=4, warmup_epochs_sdclr=2, batch_size=48)
    m = ConMix()
    calls: list[tuple] = []
    masks_after_warmup: list[torch.Tensor] = []

    def record(kind: str, step):
        def wrapped(batch: Batch) -> torch.Tensor:
            if kind == "conmix" and not masks_after_warmup:
                masks_after_warmup.extend(mask.clone() for mask in m.model.masks())
            calls.append((kind, batch.epoch, batch.step, m.optimizer.param_groups[0]["lr"],
                          id(m.optimizer), len(m.optimizer.state)))
            return step(batch)
        return wrapped

    run_dir = new_dir(tmp_path / "full")
    m.setup(cfg, run_dir)
    m.sdclr_step, m.conmix_step = record("sdclr", m.sdclr_step), record("conmix", m.conmix_step)
    summary = m.train(cfg, run_dir, resume=False)
    feats = m.embed(cfg, run_dir, "lt_train")
    return cfg, m, summary, feats, calls, masks_after_warmup


def test_phase_switch(full_run) -> None:
    _, m, summary, _, calls, masks_after_warmup = full_run
    i = m.steps_per_epoch
    assert i == 2 and summary["steps"] == 4 * i and math.isfinite(summary["final_loss"])
    assert [(k, e) for k, e, *_ in calls] == \
        [("sdclr", 1)] * i + [("sdclr", 2)] * i + [("conmix", 3)] * i + [("conmix", 4)] * i
    first = calls[2 * i]
    assert first[2] == 2 * i + 1 and first[3] == pytest.approx(m.lr_at(2 * i + 1))
    assert first[4] == calls[0][4] and first[5] > 0  # same optimiser, momentum state carried over
    assert all(torch.equal(a, b) for a, b in zip(masks_after_warmup, m.model.masks()))


@pytest.mark.parametrize("stop_after", [1, 3], ids=["mid_warmup", "mid_conmix"])
def test_resume_equals_uninterrupted_run(full_run, tmp_path: Path, stop_after: int) -> None:
    cfg, full, _, feats, _, _ = full_run
    assert_resume_matches(ConMix, cfg, new_dir(tmp_path / "run"), stop_after, full.model, feats)


def test_embeddings(full_run) -> None:
    _, _, _, feats, _, _ = full_run
    assert list(feats) == ["projector", "backbone"] and feats["projector"].shape == (95, 32)
    np.testing.assert_allclose(np.linalg.norm(feats["projector"], axis=1), 1.0, rtol=1e-5)


def test_features_are_the_dense_eval_mode_head_output(tmp_path: Path) -> None:
    m = ConMix()
    m.setup(cell(tmp_path), tmp_path)
    m.model.update_masks(0.9)
    m.model.eval()
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        feats = m.features(x)
        h, z = m.model.net(x)
        torch.testing.assert_close(feats["projector"], F.normalize(z, dim=1))
        torch.testing.assert_close(feats["backbone"], F.normalize(h, dim=1))
        pruned = F.normalize(m.model(x, pruned=True)[1], dim=1)
        assert not torch.allclose(feats["projector"], pruned)


def test_trains_on_digits(tmp_path: Path) -> None:
    cfg = cell(tmp_path, dataset="digits", epochs=2, warmup_epochs_sdclr=1, batch_size=256)
    m = ConMix()
    assert math.isfinite(m.train(cfg, tmp_path, resume=False)["final_loss"])
    assert np.isfinite(m.embed(cfg, tmp_path, "lt_train")["projector"]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_sync_in_loss_and_step_on_cuda(tmp_path: Path) -> None:
    cfg = dataclasses.replace(cell(tmp_path), device="cuda")
    m = ConMix()
    m.setup(cfg, tmp_path)
    gen = torch.Generator(device="cuda").manual_seed(0)
    recipe, x = m.augment_recipe(), m.images[:64]
    views = augment(x, recipe, gen), augment(x, recipe, gen)
    for epoch in (1, 2):
        m.on_epoch_start(epoch, gen)
        batch = Batch(*views, torch.arange(64, device="cuda"), epoch, 1, gen)
        m.training_step(batch)  # warm-up kernels and lazy optimiser state
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            loss = m.training_step(batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.isfinite(loss).item()
