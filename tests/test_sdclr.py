"""SDCLR (simclr_sdclr.md): NT-Xent, network shapes, dual BN, pruning masks, two-pass gradient,
schedule, configs, training and resume on synthetic and digits."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from grad_helpers import GradRecorder
from resume_helpers import assert_resume_matches

from harness.config import CellConfig
from harness.data.augment import augment
from harness.method import Batch
from harness.nn.losses import nt_xent
from harness.nn.nets import conmix_network
from harness.nn.pruning import (
    DualBatchNorm,
    DualBatchNorm1d,
    DualBatchNorm2d,
    PrunableNet,
    magnitude_threshold,
)
from harness.registry import method_class

SDCLR = method_class("sdclr")


def tiny_net(width: int = 8, proj_dim: int = 16) -> PrunableNet:
    torch.manual_seed(0)
    return PrunableNet(conmix_network("resnet18", "cifar", width, (1, 1, 1, 1), proj_dim,
                                      norm2d=DualBatchNorm2d, norm1d=DualBatchNorm1d))


def cell(method: str, tmp_path: Path, dataset: str = "synthetic", **overrides) -> CellConfig:
    """A test-budget cell at IR 100 and 8 px (95 synthetic / 433 digits images): cheap on CPU."""
    cls = method_class(method)
    return CellConfig(method=method, dataset=dataset, ir=100, seed=0, device="cpu",
                      params=cls.resolve_params(dataset, overrides, budget="test"),
                      data={"image_size": 8}, data_root=str(tmp_path / "data"))


def step_gradients(m, batch: Batch, two_pass: bool, state: dict) -> dict:
    m.model.load_state_dict(state)
    m.p = dataclasses.replace(m.p, two_pass=two_pass)
    m.optimizer = GradRecorder(m.model)
    m.training_step(batch)
    return m.optimizer.grads


def assert_same_gradients(single: dict, double: dict) -> None:
    assert single.keys() == double.keys()
    assert sum(g is not None for g in single.values()) > len(single) // 2
    for name, g in single.items():
        assert (g is None) == (double[name] is None), name
        if g is not None:
            torch.testing.assert_close(double[name], g, atol=1e-5, rtol=1e-5, msg=name)


# -- NT-Xent (spec 1, 7) -------------------------------------------------------------------
def test_nt_xent_matches_reference_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    z1 = F.normalize(torch.randn(12, 8, generator=g), dim=1)
    z2 = F.normalize(torch.randn(12, 8, generator=g), dim=1)
    z = torch.cat([z1, z2]).double()
    logits = z @ z.t() / 0.2
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(12, 24), torch.arange(12)])
    expected = F.cross_entropy(logits, target)
    assert abs(nt_xent(z1, z2, 0.2).item() - expected.item()) < 1e-6


def test_nt_xent_permutation_invariant_stable_and_orthogonal_value() -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    perm = torch.randperm(10, generator=g)
    torch.testing.assert_close(nt_xent(z1[perm], z2[perm], 0.2), nt_xent(z1, z2, 0.2))
    assert torch.isfinite(nt_xent(z1, z1.clone(), 0.01))  # e^100 would overflow without LSE
    n, tau = 5, 0.2
    eye = torch.eye(2 * n)[:n]  # z_i = z_p(i), all other pairs orthogonal
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    assert abs(nt_xent(eye, eye.clone(), tau).item() - expected) < 1e-6


# -- network and augmentation (spec 2, 3) --------------------------------------------------
def test_resnet18_dimensions_and_cifar_stem() -> None:
    net = conmix_network("resnet18", "cifar", 64, None, 128)
    x = torch.randn(2, 3, 32, 32)
    assert net.backbone.forward_maps(x).shape[-2:] == (4, 4)
    h, z = net(x)
    assert h.shape == (2, 512) and z.shape == (2, 128)


def test_augmentation_recipe(tmp_path: Path) -> None:
    m = SDCLR()
    m.setup(cell("sdclr", tmp_path), tmp_path)
    recipe = m.augment_recipe()
    assert recipe.scale[0] == 0.1 and recipe.interpolation == "bicubic" and recipe.blur_p == 0.0
    views = augment(m.images[:4], recipe, torch.Generator().manual_seed(0))
    assert views.shape == (4, 3, m.data.image_size, m.data.image_size)


# -- dual batch-norm and pruning (spec 5.2, 7) ----------------------------------------------
def test_dual_batch_norm_switches_and_restores() -> None:
    net = tiny_net()
    assert net.dual_norms and all(isinstance(m, DualBatchNorm) for m in net.dual_norms)
    with pytest.raises(RuntimeError), net.pruned_branch():
        assert all(m.use_prune for m in net.dual_norms)
        raise RuntimeError
    assert not any(m.use_prune for m in net.dual_norms)


def test_threshold_index_rule() -> None:
    w = [torch.tensor([0.5, -0.1, 0.8, 0.3]), torch.tensor([[-0.7, 0.2], [0.6, -0.4]])]
    assert magnitude_threshold(w, 0.25).item() == pytest.approx(0.3)  # sorted |w|[ceil(2)]
    assert magnitude_threshold(w, 0.0).item() == pytest.approx(0.1)
    assert magnitude_threshold(w, 1.0).item() == pytest.approx(0.8)  # index clamped to n - 1


@pytest.mark.parametrize("p", [0.9, 0.3])
def test_mask_keeps_top_fraction_of_all_conv_weights(p: float) -> None:
    net = tiny_net()
    net.update_masks(p)
    convs = {f"{n}.weight" for n, m in net.net.named_modules() if isinstance(m, nn.Conv2d)}
    assert set(net.masked_names) == convs
    assert not any("head" in n for n in net.masked_names)
    total = sum(m.numel() for m in net.masks())
    kept = sum(int(m.sum()) for m in net.masks())
    assert kept == total - math.ceil(p * total)  # continuous weights: no ties
    assert abs(net.kept_fraction() - (1 - p)) < 1 / total + 1e-9
    pairs = [(net.net.get_parameter(n).abs(), m) for n, m in zip(net.masked_names, net.masks())]
    smallest_kept = min(w[m].min() for w, m in pairs)
    largest_dropped = max(w[~m].max() for w, m in pairs)
    assert largest_dropped < smallest_kept
    assert sum("mask" in k for k in net.state_dict()) == len(convs)  # masks are checkpointed


def test_zero_pruning_with_identical_bn_sets_equals_dense() -> None:
    net = tiny_net()
    net.update_masks(0.0)
    x = torch.randn(6, 3, 16, 16)
    for train in (True, False):
        net.train(train)
        for a, b in zip(net(x), net(x, pruned=True)):
            torch.testing.assert_close(a, b)


def test_pruned_branch_shares_unmasked_weights_and_leaks_nothing() -> None:
    net = tiny_net()
    net.update_masks(0.9)
    net.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        for norm in net.dual_norms:  # make the two BN sets differ
            norm.prune.running_mean.uniform_(-0.2, 0.2)
        dense_before = net(x)[1].clone()
        pruned = net(x, pruned=True)[1]
        reference = copy.deepcopy(net.net)
        for name, mask in zip(net.masked_names, net.masks()):
            reference.get_parameter(name).mul_(mask)
        for norm in (m for m in reference.modules() if isinstance(m, DualBatchNorm)):
            norm.use_prune = True
        torch.testing.assert_close(pruned, reference(x)[1])
        torch.testing.assert_close(net(x)[1], dense_before)  # masks never reach the dense forward
    assert not torch.allclose(pruned, dense_before)
    dense = conmix_network("resnet18", "cifar", 8, (1, 1, 1, 1), 16)
    n_dense = sum(p.numel() for p in dense.parameters())
    n_bn = sum(p.numel() for m in net.dual_norms for p in m.prune.parameters())
    assert sum(p.numel() for p in net.parameters()) == n_dense + n_bn  # one set of weights


def test_pruned_branch_gradients() -> None:
    net = tiny_net()
    net.update_masks(0.9)
    net(torch.randn(6, 3, 16, 16), pruned=True)[1].pow(2).sum().backward()
    for name, mask in zip(net.masked_names, net.masks()):
        grad = net.net.get_parameter(name).grad
        assert torch.all(grad[~mask] == 0), name
    pairs = [(net.net.get_parameter(n).grad, m) for n, m in zip(net.masked_names, net.masks())]
    assert any(grad[m].abs().sum() > 0 for grad, m in pairs)
    assert all(m.prune.weight.grad is not None for m in net.dual_norms)
    assert all(m.nonprune.weight.grad is None for m in net.dual_norms)
    linears = [m for m in net.net.head.modules() if isinstance(m, nn.Linear)]
    assert all(lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0 for lin in linears)


def test_masks_follow_current_dense_weights_each_epoch(tmp_path: Path) -> None:
    m = SDCLR()
    m.setup(cell("sdclr", tmp_path), tmp_path)
    gen = torch.Generator().manual_seed(0)
    m.on_epoch_start(1, gen)
    before = [mask.clone() for mask in m.model.masks()]
    with torch.no_grad():
        for name in m.model.masked_names:
            m.model.net.get_parameter(name).normal_()
    m.on_epoch_start(2, gen)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.model.masks()))
    expected = copy.deepcopy(m.model)
    expected.update_masks(m.p.prune_percent)
    assert all(torch.equal(a, b) for a, b in zip(expected.masks(), m.model.masks()))


# -- gradient schemes, schedule, configs ----------------------------------------------------
def test_two_pass_gradient_equals_single_pass(tmp_path: Path) -> None:
    m = SDCLR()
    m.setup(cell("sdclr", tmp_path), tmp_path)
    gen = torch.Generator().manual_seed(0)
    m.on_epoch_start(1, gen)
    recipe = m.augment_recipe()
    x = m.images[:32]
    batch = Batch(augment(x, recipe, gen), augment(x, recipe, gen), torch.arange(32), 1, 1, gen)
    state = copy.deepcopy(m.model.state_dict())
    single = step_gradients(m, batch, False, state)
    assert_same_gradients(single, step_gradients(m, batch, True, state))


def test_paper_configs() -> None:
    p = SDCLR.resolve_params("cifar10")
    assert (p["arch"], p["stem"], p["epochs"], p["batch_size"], p["lr"], p["momentum"]) == \
        ("resnet18", "cifar", 1000, 512, 0.5, 0.9)
    assert (p["weight_decay"], p["temperature"], p["prune_percent"], p["proj_dim"]) == \
        (1e-4, 0.2, 0.9, 128)
    assert SDCLR.resolve_params("cifar20")["prune_percent"] == 0.9
    assert SDCLR.resolve_params("stl10")["stem"] == "imagenet"
    assert SDCLR.resolve_params("tinyimagenet")["prune_percent"] == 0.3
    lt = SDCLR.resolve_params("imagenet_lt")
    assert (lt["arch"], lt["stem"], lt["prune_percent"]) == ("resnet50", "imagenet", 0.3)
    assert SDCLR.reference_card["effective_batch"] == 512


# -- training, features, resume -------------------------------------------------------------
def new_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


def test_trains_resumes_and_embeds_on_synthetic(tmp_path: Path) -> None:
    cfg = cell("sdclr", tmp_path, epochs=2, batch_size=48)
    m = SDCLR()
    summary = m.train(cfg, new_dir(tmp_path / "full"), resume=False)
    assert summary["epochs"] == 2 and math.isfinite(summary["final_loss"])
    feats = m.embed(cfg, tmp_path / "full", "lt_train")
    assert list(feats) == ["projector", "backbone"]
    assert feats["projector"].shape == (len(m.data), 32)
    np.testing.assert_allclose(np.linalg.norm(feats["projector"], axis=1), 1.0, rtol=1e-5)
    assert_resume_matches(SDCLR, cfg, new_dir(tmp_path / "stop1"), 1, m.model, feats)


def test_trains_on_digits(tmp_path: Path) -> None:
    cfg = cell("sdclr", tmp_path, dataset="digits", epochs=1, batch_size=256)
    m = SDCLR()
    assert math.isfinite(m.train(cfg, tmp_path, resume=False)["final_loss"])
    assert np.isfinite(m.embed(cfg, tmp_path, "lt_train")["projector"]).all()
