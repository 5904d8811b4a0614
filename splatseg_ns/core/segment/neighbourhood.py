"""Labels that respect 3D neighbourhood: each Gaussian's nearest neighbours, and votes smoothed over them.

A view that misses a thin part, or gives it its whole object's mask, moves the votes of the part's
Gaussians one by one: those seen in that view at a grazing angle lose, their neighbours win.
GaussianCut (Jain et al., NeurIPS 2024) labels a graph over each Gaussian's nearest neighbours with
the 2D evidence as unaries; a few rounds of averaging each Gaussian's vote shares with its
neighbours' (`smooth_votes`) is the cheap form of the same prior: a Gaussian takes the label most of
its surroundings carry, unless its own evidence is clear. The graph (`knn_graph`) comes from
scipy's cKDTree on the CPU: ~1 s for 1M Gaussians on two cores.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree


def knn_graph(means: torch.Tensor, k: int) -> torch.Tensor:
    """[N, k] long: each Gaussian's k nearest other Gaussians (by centre), on the means' device.

    Non-finite centres (a diverged run) are their own only neighbours; fewer than k + 1 Gaussians:
    the missing neighbours are the Gaussian itself."""
    points = means.detach().double().cpu().numpy()
    count = points.shape[0]
    finite = np.isfinite(points).all(axis=1)
    neighbours = np.repeat(np.arange(count)[:, None], k, axis=1)
    index = np.flatnonzero(finite)
    if index.size > 1 and k > 0:
        reach = min(k + 1, index.size)
        _, found = cKDTree(points[index]).query(points[index], k=reach, workers=-1)
        found = index[np.asarray(found).reshape(index.size, reach)[:, 1:]]
        neighbours[index, : reach - 1] = found
    return torch.from_numpy(neighbours).to(means.device)


@torch.no_grad()
def smooth_votes(weights: torch.Tensor, neighbours: torch.Tensor, rounds: int, strength: float) -> torch.Tensor:
    """Vote weights [N, L] whose shares are mixed with the neighbours': per round, each Gaussian's share
    vector becomes (1 - strength) x its own + strength x its neighbours' mean; its total weight stays
    its own (a Gaussian no view saw stays unseen, however its neighbours voted).

    neighbours [N, k] from `knn_graph`; rounds 0 or strength 0 returns `weights` unchanged."""
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
