"""Functional losses shared by several methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent over 2N views (simclr_sdclr.md section 1), via log-sum-exp.

    z1, z2: (N, D) projections of the two views (normalised here). Cross-entropy over the 2N x 2N
    similarity matrix with the diagonal removed; the target of row i is its other view.
    """
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = z1.shape[0]
    logits = z @ z.t() / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = (torch.arange(2 * n, device=z.device) + n) % (2 * n)  # built on device: no host sync
    return F.cross_entropy(logits, target)
