"""Labels that respect 3D neighbourhood: votes smoothed over each Gaussian's nearest neighbours.

A view that misses a thin part, or gives it its whole object's mask, moves the votes of the part's
Gaussians one by one: those seen in that view at a grazing angle lose, their neighbours win.
GaussianCut (Jain et al., NeurIPS 2024) labels a graph over each Gaussian's nearest neighbours with
the 2D evidence as unaries; a few rounds of averaging each Gaussian's vote shares with its
neighbours' (`smooth_votes`) is the cheap form of the same prior: a Gaussian takes the label most of
its surroundings carry, unless its own evidence is clear. The graph is `losses.knn_indices`, the one
the spatial smoothness term uses.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def smooth_votes(weights: torch.Tensor, neighbours: torch.Tensor, rounds: int, strength: float) -> torch.Tensor:
    """Vote weights [N, L] whose shares are mixed with the neighbours': per round, each Gaussian's share
    vector becomes (1 - strength) x its own + strength x its neighbours' mean; its total weight stays
    its own (a Gaussian no view saw stays unseen, however its neighbours voted).

    neighbours [N, k] from `losses.knn_indices`; rounds 0 or strength 0 returns `weights` unchanged."""
    if rounds <= 0 or strength <= 0 or weights.shape[0] == 0:
        return weights
    total = weights.sum(dim=1, keepdim=True)
    seen = (total > 0).float()
    share = weights / total.clamp_min(1e-12)
    count = seen[neighbours].sum(dim=1)  # [N, 1]: seen neighbours
    for _ in range(rounds):
        mixed = torch.empty_like(share)
        for start in range(0, share.shape[0], CHUNK):  # [chunk, k, L] at a time: 1M x 8 x 30 would be 1 GB
            rows = neighbours[start : start + CHUNK]
            mixed[start : start + CHUNK] = (share[rows] * seen[rows]).sum(dim=1)
        mixed = mixed / count.clamp_min(1.0)
        share = torch.where(count > 0, (1.0 - strength) * share + strength * mixed, share)
    return share * total


CHUNK = 1 << 16
"""Gaussians whose neighbours' shares are gathered at once."""
