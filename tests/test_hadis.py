"""HaDis (methods/propos_hadis.md section 7): HSD hardest pairs and weights, closed form, edge
cases, gating against ProPos, configs, and training/resume on synthetic and digits."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from byol_helpers import check_train_and_resume, check_trains_on_digits, make_batch, ready

from harness.registry import method_class

HaDis, ProPos = method_class("hadis"), method_class("propos")
plugin = sys.modules[HaDis.__module__]
hsd_loss, hardest_pairs = plugin.hsd_loss, plugin.hardest_pairs


def pair(seed: int, n: int = 24, d: int = 8,
         noise: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    teacher = torch.randn(n, d, generator=g)
    return teacher + noise * torch.randn(n, d, generator=g), teacher


def brute_force(student: torch.Tensor,
                teacher: torch.Tensor) -> list[tuple[int, int, float, float]]:
    """Per anchor, with Python loops in float64: (n_i, p_i, w^n_i, w^p_i) from the spec's rules."""
    s, t = F.normalize(student.double(), dim=1), F.normalize(teacher.double(), dim=1)
    n = len(t)

    def dist(a: torch.Tensor, b: torch.Tensor) -> float:
        return max(float((a - b).norm()), 1e-6)

    out = []
    for i in range(n):
        d_ii = dist(t[i], s[i])
        d_t = [1e-6 if j == i else dist(t[i], t[j]) for j in range(n)]
        d = [dist(t[i], s[j]) for j in range(n)]
        negatives = [j for j in range(n) if d_t[j] > d_ii]
        positives = [j for j in range(n) if j not in negatives]
        p = max(positives, key=lambda j: d[j])
        w_p = max(0.0, d[p] - d_t[p])
        if negatives:
            m = min(negatives, key=lambda j: d[j])
            out.append((m, p, max(0.0, d_t[m] - d[m]), w_p))
        else:
            out.append((-1, p, 0.0, w_p))
    return out


def test_hardest_pairs_and_weights_match_brute_force() -> None:
    for seed, noise in [(0, 0.3), (1, 0.8), (2, 1.5)]:
        student, teacher = pair(seed, noise=noise)
        hp = hardest_pairs(student, teacher)
        for i, (neg, pos, w_n, w_p) in enumerate(brute_force(student, teacher)):
            assert int(hp.pos_index[i]) == pos
            assert float(hp.w_pos[i]) == pytest.approx(w_p, abs=1e-5)
            assert float(hp.w_neg[i]) == pytest.approx(w_n, abs=1e-5)
            assert bool(hp.has_neg[i]) == (neg >= 0)
            if neg >= 0:
                assert int(hp.neg_index[i]) == neg
        assert hp.w_neg.gt(0).any() and hp.w_pos.gt(0).any()  # both sides active somewhere


def test_closed_form_student_equals_teacher() -> None:
    _, teacher = pair(3)
    student = teacher.clone().requires_grad_(True)
    loss = hsd_loss(student, teacher, 0.5)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    loss.backward()
    assert student.grad.abs().max().item() == 0.0


def test_softmax_and_softplus_forms_agree() -> None:
    student, teacher = pair(4, noise=0.7)
    hp = hardest_pairs(student, teacher)
    logits = torch.stack([hp.w_neg * hp.d_neg, hp.w_pos * hp.d_pos], dim=1) / 0.5
    ce = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    assert abs(hsd_loss(student, teacher, 0.5).item() - ce.item()) < 1e-6


def test_weights_carry_no_gradient_and_teacher_gets_none() -> None:
    student, teacher = pair(5, noise=0.7)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    hp = hardest_pairs(student, teacher)
    assert not hp.w_neg.requires_grad and not hp.w_pos.requires_grad
    assert hp.d_neg.requires_grad and hp.d_pos.requires_grad
    loss = hsd_loss(student, teacher, 0.5)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    # the gradient is that of w^p D_p - w^n D_n with the weights as constants
    s = student.detach().clone().requires_grad_(True)
    hp2 = hardest_pairs(s, teacher.detach())
    arg = (hp2.w_pos * hp2.d_pos - hp2.w_neg * hp2.d_neg) / 0.5
    (torch.sigmoid(arg.detach()) * arg).mean().backward()
    torch.testing.assert_close(student.grad, s.grad)


def test_empty_negative_set_gives_zero_weight_without_nan() -> None:
    teacher = torch.ones(6, 4)  # all teacher templates coincide: N_i is empty for every anchor
    student = torch.randn(6, 4, generator=torch.Generator().manual_seed(6)).requires_grad_(True)
    hp = hardest_pairs(student, teacher)
    assert not hp.has_neg.any() and torch.equal(hp.w_neg, torch.zeros(6))
    loss = hsd_loss(student, teacher, 0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all() and loss.item() > math.log(2)


def test_positive_pull_when_only_self_is_positive() -> None:
    """P_i = {i}: the positive term is w^p D_ii with w^p = D_ii - 1e-6 (a BYOL-like pull)."""
    teacher = torch.eye(4)
    student = F.normalize(teacher + 0.1 * torch.tensor([[0, 1.0, 0, 0]] * 4), dim=1)
    hp = hardest_pairs(student, teacher)
    assert hp.pos_index.tolist() == [0, 1, 2, 3]
    d_ii = (student - teacher).norm(dim=1)
    torch.testing.assert_close(hp.w_pos, d_ii - 1e-6)


# -- the method ----------------------------------------------------------------------------------
def test_hadis_is_propos_plus_hsd_from_epoch_one(tmp_path: Path) -> None:
    assert issubclass(HaDis, ProPos)
    m = ready("hadis", tmp_path)
    m.on_epoch_start(1, torch.Generator())
    first = m.loss_terms(make_batch(m, epoch=1))
    assert list(first) == ["psa", "hsd"] and first["hsd"].item() > 0
    later = m.loss_terms(make_batch(m, epoch=2))
    assert list(later) == ["psa", "psl", "hsd"]
    dirs = m.directions(make_batch(m, epoch=2))
    expected = sum(hsd_loss(d.prediction, d.target, 0.5) for d in dirs) / 2
    torch.testing.assert_close(m.loss_terms(make_batch(m, epoch=2))["hsd"], expected)


def test_configs() -> None:
    p = HaDis.resolve_params("cifar10")
    expected = {"hsd_weight": 1.0, "hsd_temperature": 0.5, "cluster_loss_weight": 0.1,
                "latent_std": 0.001, "batch_size": 256, "lr": 0.05, "momentum_increase": False,
                "data_resample": False, "warmup_epochs": 50, "reassign": 1}
    assert {key: p[key] for key in expected} == expected
    c20 = HaDis.resolve_params("cifar20")
    assert (c20["cluster_loss_weight"], c20["momentum_increase"], c20["data_resample"]) == \
        (0.05, True, True)
    stl = HaDis.resolve_params("stl10")  # upstream STL-10_r18_propos.yml: batch 128, one GPU
    assert stl["stem"] == "cifar" and stl["batch_size"] == 128 and "bn_group_size" not in stl
    assert p["kmeans_n_init"] == 10 and "bn_group_size" not in p  # not ProPos's 4 GPUs


def test_hsd_on_each_emulated_device_and_no_v2(tmp_path: Path) -> None:
    from harness.errors import HarnessError

    m = ready("hadis", tmp_path, bn_group_size=8)
    batch = make_batch(m, epoch=2)
    dirs = m.directions(batch)
    expected = sum(sum(hsd_loss(p, t, 0.5) for p, t in zip(d.prediction.chunk(4),
                                                           d.target.chunk(4))) / 4
                   for d in dirs) / 2
    torch.testing.assert_close(m.extra_loss_terms(dirs, batch)["hsd"], expected)
    with pytest.raises(HarnessError, match="no v2 path"):
        ready("hadis", tmp_path / "v2", v2=True)


def test_trains_resumes_and_embeds_on_synthetic(tmp_path: Path) -> None:
    check_train_and_resume("hadis", tmp_path, stop_after=1, reassign=2)


def test_trains_on_digits(tmp_path: Path) -> None:
    check_trains_on_digits("hadis", tmp_path)
