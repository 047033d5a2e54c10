"""HaDis: ProPos plus hardness-aware self-distillation (methods/propos_hadis.md section 7).

DSA (diffused sampling alignment) is ProPos's PSA and prototype contrasting is ProPos's PSL,
unchanged; HaDis adds HSD, active from epoch 1 with weight 1 and tau_h 0.5 (upstream hard-codes
both), on the local batch. The total is L_dsa + 1.0 L_hsd + lambda 1[epoch > 50] L_psl.
Build choice (spec 7.2): the predictor output is computed once per direction and shared by DSA
and HSD (upstream calls the predictor twice on identical input: identical gradients, but BN
running statistics updated twice). Upstream trained every dataset on one GPU (spec 7.3): batch
256, STL-10 128 (LR 0.05 x 128 / 256 = 0.025); it has no v2 path (its `forward_v2` crashes).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from harness.data.digit_recipe import digit_settings
from harness.errors import HarnessError
from harness.method import Batch
from harness.registry import method_class, register_method

ProPos = method_class("propos")
_propos = sys.modules[ProPos.__module__]
HADIS_UPSTREAM = "Regan-Zhang/HaDis @ 36aab39"
HADIS_SETTINGS: dict[str, Any] = {"latent_std": 0.001, "temperature": 0.5, "reassign": 1,
                                  "kmeans_restarts": 10, "gather": False, "v2": False,
                                  "hsd": {"weight": 1.0, "temperature": 0.5}}

MIN_DISTANCE = 1e-6  # every distance is clamped to >= 1e-6 (upstream: squared >= 1e-12)


class HardPairs(NamedTuple):
    """Per-anchor hardest negative/positive distances, their indices and stop-gradient weights."""

    d_neg: torch.Tensor  # D_{i, n_i} (gradient through the student)
    d_pos: torch.Tensor  # D_{i, p_i}
    w_neg: torch.Tensor  # max(0, D^t_{i,n_i} - D_{i,n_i}), 0 where N_i is empty; no gradient
    w_pos: torch.Tensor  # max(0, D_{i,p_i} - D^t_{i,p_i}); no gradient
    neg_index: torch.Tensor
    pos_index: torch.Tensor
    has_neg: torch.Tensor  # N_i non-empty


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(len(a), len(b)) euclidean distances ||a_i - b_j||, clamped to >= MIN_DISTANCE."""
    sq = (a * a).sum(dim=1)[:, None] + (b * b).sum(dim=1)[None, :] - 2.0 * a @ b.T
    return sq.clamp_min(MIN_DISTANCE**2).sqrt()


def hardest_pairs(student: torch.Tensor, teacher: torch.Tensor) -> HardPairs:
    """Partition each anchor's candidates by the teacher template and pick the hardest pairs.

    t = normalise(teacher) (no gradient), s = normalise(student). D^t_ij = ||t_i - t_j||,
    D_ij = ||t_i - s_j||. N_i = {j: D^t_ij > D_ii}, P_i = the rest (always holds i). Hardest
    negative n_i = argmin over N_i of D_ij, hardest positive p_i = argmax over P_i of D_ij, via
    masked argmin/argmax (no loops, no host synchronisation).
    """
    t = F.normalize(teacher.detach().float(), dim=1)
    s = F.normalize(student.float(), dim=1)
    eye = torch.eye(t.shape[0], dtype=torch.bool, device=t.device)
    # Diagonals exact (build choice): D^t_ii is the clamp value, D_ii comes from the difference
    # vector, so s_i = t_i gives D_ii = D^t_ii instead of matmul rounding noise (~3e-4).
    d_teacher = _distances(t, t).masked_fill(eye, MIN_DISTANCE)
    d_diag = ((t - s) ** 2).sum(dim=1).clamp_min(MIN_DISTANCE**2).sqrt()
    d = torch.where(eye, d_diag[:, None], _distances(t, s))
    d_const = d.detach()
    negative = d_teacher > d_const.diagonal()[:, None]
    neg_index = torch.where(negative, d_const, torch.inf).argmin(dim=1, keepdim=True)
    pos_index = torch.where(negative, -torch.inf, d_const).argmax(dim=1, keepdim=True)
    d_neg = d.gather(1, neg_index).squeeze(1)
    d_pos = d.gather(1, pos_index).squeeze(1)
    has_neg = negative.any(dim=1)
    w_neg = (d_teacher.gather(1, neg_index).squeeze(1) - d_neg.detach()).clamp_min(0.0) * has_neg
    w_pos = (d_pos.detach() - d_teacher.gather(1, pos_index).squeeze(1)).clamp_min(0.0)
    return HardPairs(d_neg, d_pos, w_neg, w_pos, neg_index.squeeze(1), pos_index.squeeze(1),
                     has_neg)


def hsd_loss(student: torch.Tensor, teacher: torch.Tensor,
             temperature: float = 0.5) -> torch.Tensor:
    """Hardness-aware self-distillation, one direction (spec 7.2).

    student: (B, D) predictor outputs of one view; teacher: (B, D) target projections of the other
    view (both normalised here). Mean over anchors of
    softplus((w^p D_{i,p_i} - w^n D_{i,n_i}) / tau), i.e. the cross-entropy of
    [w^n D_{i,n_i}, w^p D_{i,p_i}] / tau with target 0.
    """
    pairs = hardest_pairs(student, teacher)
    return F.softplus((pairs.w_pos * pairs.d_pos - pairs.w_neg * pairs.d_neg) / temperature).mean()


@dataclass(frozen=True)
class HaDisParams(ProPos.Params):
    hsd_weight: float = 1.0  # upstream: fixed 1.0
    hsd_temperature: float = 0.5  # tau_h, upstream: fixed 0.5


@register_method("hadis")
class HaDis(ProPos):
    description = "HaDis: ProPos + hardness-aware self-distillation (HSD from epoch 1)"
    Params = HaDisParams
    # HaDis's own configs (spec 7.3), not ProPos's 4-GPU ones.
    dataset_params = {"cifar20": {"momentum_increase": True, "data_resample": True,
                                  "cluster_loss_weight": 0.05},
                      "stl10": {"batch_size": 128},
                      "imagenet_lt": ProPos.dataset_params["imagenet_lt"], **digit_settings()}
    version_bumps = {"stl10": 1}  # issue 14: upstream batch 128
    reference_card = {"world_size": 1, "batch_per_device": 256, "effective_batch": 256,
                      "gather": False, "amp": False}
    upstream = {
        "cifar10": _propos.upstream_recipe(
            f"{HADIS_UPSTREAM} config/cifar10_r18_propos.yml", _propos.CIFAR10_NORM, 1, 256,
            **HADIS_SETTINGS, cluster_loss_weight=0.1, data_resample=False,
            ema={"base": 0.996, "cosine_to_1": False}),
        "cifar20": _propos.upstream_recipe(
            f"{HADIS_UPSTREAM} config/cifar20_r18_propos.yml", _propos.CIFAR20_NORM, 1, 256,
            **HADIS_SETTINGS, cluster_loss_weight=0.05, data_resample=True,
            ema={"base": 0.996, "cosine_to_1": True}),
        "stl10": _propos.upstream_recipe(
            f"{HADIS_UPSTREAM} config/STL-10_r18_propos.yml", _propos.IMAGENET_NORM, 1, 128,
            size=96, **HADIS_SETTINGS, cluster_loss_weight=0.1, data_resample=False,
            ema={"base": 0.996, "cosine_to_1": False})}

    def check_params(self) -> None:
        super().check_params()
        if self.p.v2:
            raise HarnessError("hadis: no v2 path (upstream HaDis's forward_v2 crashes, spec 7.4)")

    def recipe(self) -> dict[str, Any]:
        return {**super().recipe(),
                "hsd": {"weight": self.p.hsd_weight, "temperature": self.p.hsd_temperature}}

    def extra_loss_terms(self, dirs: list[Any], batch: Batch) -> dict[str, torch.Tensor]:
        terms = super().extra_loss_terms(dirs, batch)
        tau, w = self.p.hsd_temperature, self.local_devices
        # on each device's own batch (spec 7.1), averaged over this rank's devices (real ranks:
        # the gradient mean over ranks completes the mean over all devices)
        hsd = sum(torch.stack([hsd_loss(p, t, tau) for p, t in
                               zip(d.prediction.chunk(w), d.target.chunk(w))]).mean()
                  for d in dirs) / len(dirs)
        return {**terms, "hsd": self.p.hsd_weight * hsd}
