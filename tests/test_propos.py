"""BYOL and ProPos (methods/propos_hadis.md): PSA, PSL, EMA target, schedules, gating, E-step,
pseudo-label resampling, configs, and training/resume on synthetic and digits."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from byol_helpers import check_train_and_resume, check_trains_on_digits, make_batch, ready

from harness.kmeans import kmeans
from harness.nn.byol import ema_momentum
from harness.registry import method_class

ProPos, BYOL = method_class("propos"), method_class("byol")
plugin = sys.modules[ProPos.__module__]
psa_loss, psl_loss, propos_lr = plugin.psa_loss, plugin.psl_loss, plugin.propos_lr


def reference_psl(online: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, k: int,
                  tau: float) -> float:
    """Spec 2.2 written out: absent rows removed, e^-10 per absent column, mean over present."""
    q, t = F.normalize(online.detach().double(), dim=1), F.normalize(target.double(), dim=1)
    present = [c for c in range(k) if (labels == c).any()]
    mu = {c: F.normalize(q[labels == c].mean(0), dim=0) for c in present}
    mu_t = {c: F.normalize(t[labels == c].mean(0), dim=0) for c in present}
    total = 0.0
    for c in present:
        pos = math.exp(float(mu[c] @ mu_t[c]) / tau)
        neg = sum(math.exp(float(mu[c] @ mu[j]) / tau) for j in present if j != c)
        neg += (k - len(present)) * math.exp(-10.0)
        total -= math.log(pos / (pos + neg))
    return total / len(present)


# -- losses ------------------------------------------------------------------------------------
def test_psa_is_two_minus_two_cos_on_normalised_inputs() -> None:
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    expected = (2 - 2 * F.cosine_similarity(p, t)).mean()
    torch.testing.assert_close(psa_loss(p, t), expected)
    torch.testing.assert_close(psa_loss(5 * p, 0.1 * t), expected)  # scale-free
    assert psa_loss(t, 3 * t).abs().item() < 1e-6


def test_psl_closed_form_orthogonal_prototypes() -> None:
    k, tau = 6, 0.5
    basis = torch.eye(8)[:k]
    labels = torch.arange(k).repeat(3)
    z = basis[labels] * torch.rand(len(labels), 1).add(0.5)  # scaled copies of e_k
    expected = math.log(1 + (k - 1) * math.exp(-1 / tau))
    assert abs(psl_loss(z, z.clone(), labels, k, tau).item() - expected) < 1e-6


def test_psl_matches_equations_with_absent_clusters() -> None:
    g = torch.Generator().manual_seed(1)
    q, t = torch.randn(20, 8, generator=g), torch.randn(20, 8, generator=g)
    labels = torch.tensor([0, 2, 2, 5, 0, 5, 5, 2, 0, 7] * 2)  # clusters 1, 3, 4, 6, 8, 9 absent
    ours = psl_loss(q, t, labels, 10, 0.5)
    assert abs(ours.item() - reference_psl(q, t, labels, 10, 0.5)) < 1e-5
    q.requires_grad_(True)
    psl_loss(q, t, labels, 10, 0.5).backward()
    assert torch.isfinite(q.grad).all()
    full = torch.arange(20) % 10
    assert abs(psl_loss(q, t, full, 10, 0.5).item() - reference_psl(q, t, full, 10, 0.5)) < 1e-5


def test_psl_every_sample_its_own_prototype() -> None:
    """B = K, labels = arange: prototypes are the normalised samples, so PSL is a cross-entropy
    with positive cos(q_i, t_i) and online-online negatives cos(q_i, q_j)."""
    g = torch.Generator().manual_seed(2)
    q, t, tau = torch.randn(12, 8, generator=g), torch.randn(12, 8, generator=g), 0.5
    qn, tn = F.normalize(q, dim=1), F.normalize(t, dim=1)
    logits = qn @ qn.T / tau
    logits.diagonal().copy_((qn * tn).sum(1) / tau)
    expected = F.cross_entropy(logits, torch.arange(12))
    torch.testing.assert_close(psl_loss(q, t, torch.arange(12), 12, tau), expected)


# -- schedules ---------------------------------------------------------------------------------
def test_ema_cosine_schedule_endpoints() -> None:
    total = 1000 * 97
    assert ema_momentum(0, total, 0.996, True) == pytest.approx(0.996, abs=1e-12)
    assert ema_momentum(total, total, 0.996, True) == pytest.approx(1.0, abs=1e-12)
    ramp = [ema_momentum(s, total, 0.996, True) for s in range(0, total + 1, 997)]
    assert all(a <= b for a, b in zip(ramp, ramp[1:]))
    assert ema_momentum(total // 2, total, 0.996, False) == 0.996


def test_lr_schedule_warmup_and_cosine_with_denominator_e() -> None:
    eta = 0.05
    assert propos_lr(0, eta, 50, 1000) == 0.0
    assert propos_lr(25, eta, 50, 1000) == pytest.approx(eta / 2)
    assert propos_lr(50, eta, 50, 1000) == pytest.approx(eta)
    assert propos_lr(1000, eta, 50, 1000) / eta == pytest.approx(0.00616, abs=1e-5)


def test_lr_at_scales_with_batch_and_predictor_is_10x(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, batch_size=64, epochs=100, warmup_epochs=10)
    spe = m.steps_per_epoch
    assert m.lr_at(10 * spe) == pytest.approx(0.05 * 64 / 256)
    groups = m.optimizer.param_groups
    assert [g["lr_scale"] for g in groups] == [1.0, 10.0]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in m.model.predictor.parameters()}
    assert all(g["weight_decay"] == 5e-4 and g["momentum"] == 0.9 for g in groups)


# -- networks, EMA, noise ---------------------------------------------------------------------
def test_predictor_init_and_target_starts_as_copy(tmp_path: Path) -> None:
    m = ready("propos", tmp_path)
    for lin in [mod for mod in m.model.predictor if isinstance(mod, torch.nn.Linear)]:
        assert lin.weight.std().item() == pytest.approx(0.01, rel=0.2) and not lin.bias.any()
    for a, b in zip(m.model.online_parameters(), m.model.target_parameters()):
        assert torch.equal(a, b) and not b.requires_grad


def test_sigma_zero_lambda_zero_is_symmetric_byol(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, latent_std=0.0, cluster_loss_weight=0.0)
    batch = make_batch(m, epoch=3)
    net = m.model

    def one_way(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        p = net.predictor(net.online_projector(net.online_backbone(a)))
        with torch.no_grad():
            t = net.target_projector(net.target_backbone(b))
        return (2 - 2 * F.cosine_similarity(p, t)).mean()

    expected = 0.5 * (one_way(batch.view1, batch.view2) + one_way(batch.view2, batch.view1))
    terms = m.loss_terms(batch)
    assert list(terms) == ["psa"]
    torch.testing.assert_close(terms["psa"], expected, rtol=1e-5, atol=1e-6)


def test_target_ignores_sigma_and_gets_no_gradient_and_ema_update(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, latent_std=0.5)
    net = m.model
    quiet = make_batch(m, epoch=1)  # warm-up: sigma off
    noisy = make_batch(m, epoch=3)
    d_quiet, d_noisy = m.directions(quiet), m.directions(noisy)
    for a, b in zip(d_quiet, d_noisy):
        torch.testing.assert_close(a.target, b.target)
        torch.testing.assert_close(a.online, b.online)
        assert not torch.allclose(a.prediction, b.prediction)
        assert not a.target.requires_grad
    bn = next(mod for mod in net.online_backbone.modules() if isinstance(mod, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(100.0)  # a buffer the EMA must not carry over
    old_target = [p.detach().clone() for p in net.target_parameters()]
    m.global_step = 1
    m.training_step(noisy)
    m.after_optimizer_step(1)
    mom = ema_momentum(1, m.p.epochs * m.steps_per_epoch, m.p.momentum_base, m.p.momentum_increase)
    for old, theta, xi in zip(old_target, net.online_parameters(), net.target_parameters()):
        assert xi.grad is None
        torch.testing.assert_close(xi, mom * old + (1 - mom) * theta, rtol=1e-6, atol=1e-7)
    for target_bn in net.target_backbone.modules():
        if isinstance(target_bn, torch.nn.BatchNorm2d):
            assert target_bn.running_mean.abs().max() < 10  # its own statistics


def test_latent_noise_has_sigma_std_and_only_after_warmup(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, latent_std=0.1)
    seen: list[torch.Tensor] = []
    m.model.predictor.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))
    z = torch.zeros(4096, m.p.feat_dim)
    m.predict_noisy(z, m.latent_sigma(2), torch.Generator().manual_seed(0))
    noise = seen[-1]
    assert noise.std().item() == pytest.approx(0.1, rel=0.02) and abs(noise.mean().item()) < 3e-3
    m.predict_noisy(z, m.latent_sigma(2), torch.Generator().manual_seed(1))
    assert not torch.equal(seen[-1], noise)  # fresh draws from the step's generator
    m.predict_noisy(z, m.latent_sigma(1), torch.Generator().manual_seed(0))
    assert torch.equal(seen[-1], z)  # warm-up epoch: sigma = 0


def test_gating_of_psl_and_noise() -> None:
    m = ProPos()
    m.p = ProPos.Params()
    assert (m.psl_weight(50), m.latent_sigma(50)) == (0.0, 0.0)
    assert (m.psl_weight(51), m.latent_sigma(51)) == (0.1, 0.001)
    assert m.psl_weight(1) == 0.0 and m.latent_sigma(1) == 0.0


def test_psl_term_present_only_after_warmup(tmp_path: Path) -> None:
    m = ready("propos", tmp_path)  # warm-up 1 epoch in the test budget
    m.on_epoch_start(1, torch.Generator())
    assert list(m.loss_terms(make_batch(m, epoch=1))) == ["psa"]
    terms = m.loss_terms(make_batch(m, epoch=2))
    assert list(terms) == ["psa", "psl"] and terms["psl"].item() > 0


def test_shuffling_bn_is_a_no_op_on_one_gpu(tmp_path: Path) -> None:
    m = ready("propos", tmp_path)
    batch = make_batch(m, epoch=1)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.target(batch.view1)[perm], m.target(batch.view1[perm]))


# -- E-step and resampling ------------------------------------------------------------------
def test_e_step_is_seeded_cosine_kmeans_on_target_projections(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, reassign=2)
    feats = m.target_projections()
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(len(feats)))
    assert m.model.training  # train mode restored
    embedded = m.embed_images(m.data.images)["projector"]
    torch.testing.assert_close(feats, torch.from_numpy(embedded))
    expected = kmeans(feats, 10, metric="cosine", n_init=2, seed=0).labels
    assert m.e_step().tolist() == expected.tolist()
    calls = []
    m.e_step = lambda: calls.append(1) or m.pseudo_labels
    for epoch in (1, 2, 3, 4, 5):
        m.on_epoch_start(epoch, torch.Generator())
    assert len(calls) == 3  # before epochs 1, 3, 5 (= after epochs 2 and 4)


def test_byol_never_clusters(tmp_path: Path) -> None:
    m = ready("byol", tmp_path)
    assert not hasattr(m, "pseudo_labels") and m.p.latent_std == 0.0
    assert m.p.momentum_increase and list(m.loss_terms(make_batch(m, epoch=3))) == ["psa"]


def test_data_resample_weights_draws_and_reproducibility(tmp_path: Path) -> None:
    m = ready("propos", tmp_path, data_resample=True)
    n = len(m.data)
    m.pseudo_labels = torch.cat([torch.zeros(n - 30, dtype=torch.long), torch.arange(30) % 3 + 1])
    w = m.resample_weights()
    assert w[0].item() == pytest.approx(n / (n - 30)) and w[-1].item() == pytest.approx(n / 10)
    draws = m.epoch_indices(1, torch.Generator().manual_seed(5))
    assert draws.shape == (m.steps_per_epoch * m.p.batch_size,)
    assert torch.equal(draws, m.epoch_indices(1, torch.Generator().manual_seed(5)))
    m.steps_per_epoch = 500  # many draws: every pseudo-cluster gets about 1/4 of them
    shares = torch.bincount(m.pseudo_labels[m.epoch_indices(1, torch.Generator().manual_seed(5))])
    assert ((shares / shares.sum() - 0.25).abs() < 0.02).all()


def test_configs() -> None:
    p = ProPos.resolve_params("cifar10")
    expected = {"batch_size": 256, "lr": 0.05, "weight_decay": 5e-4, "momentum": 0.9,
                "epochs": 1000, "warmup_epochs": 50, "final_lr": 0.0, "feat_dim": 256, "hidden_size": 4096,
                "temperature": 0.5, "cluster_loss_weight": 0.1, "latent_std": 0.001,
                "momentum_base": 0.996, "momentum_increase": False, "reassign": 1,
                "predictor_lr_scale": 10.0, "drop_last": True, "symmetric": True, "stem": "cifar",
                "arch": "resnet18", "data_resample": False, "gaussian_blur": False}
    assert {key: p[key] for key in expected} == expected
    c20 = ProPos.resolve_params("cifar20")
    assert c20["momentum_increase"] and c20["data_resample"]
    assert ProPos.resolve_params("stl10")["stem"] == "cifar"
    b = BYOL.resolve_params("cifar20")
    assert b["momentum_increase"] and "cluster_loss_weight" not in b and not b["latent_std"]


# -- training and resume ---------------------------------------------------------------------
@pytest.mark.parametrize("method", ["byol", "propos"])
def test_trains_resumes_and_embeds_on_synthetic(method: str, tmp_path: Path) -> None:
    # reassign 2: the resumed epoch 2 trains on pseudo-labels restored from the checkpoint.
    overrides = {"reassign": 2} if method == "propos" else {}
    check_train_and_resume(method, tmp_path, stop_after=1, **overrides)


def test_propos_resumes_with_data_resample(tmp_path: Path) -> None:
    check_train_and_resume("propos", tmp_path, stop_after=2, data_resample=True,
                           momentum_increase=True)


@pytest.mark.parametrize("method", ["byol", "propos"])
def test_trains_on_digits(method: str, tmp_path: Path) -> None:
    check_trains_on_digits(method, tmp_path)
