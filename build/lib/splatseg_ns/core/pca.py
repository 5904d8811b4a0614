"""Principal axes of a set of vectors, signed deterministically: one PCA for every use.

DINO's scene-wide basis (`dino_features`), the viewer's fixed feature colours (`display`) and the
feature part of "segment everything" (`segmentation`) all project vectors on their leading
principal axes. Each axis is signed so that its largest-magnitude loading is positive, so a refit
on the same vectors (in any order) gives the same basis, and colours never flip between runs.
"""

from __future__ import annotations

from typing import Tuple

import torch


@torch.no_grad()
def principal_axes(x: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """(mean [C], basis [C, k], fraction of variance kept) of the rows of `x` [M, C], in x's dtype.

    Computed in float64 (an SVD of the centred rows); `k` may not exceed C. With fewer than k + 1
    rows the missing axes are zero columns.
    """
    if not 1 <= k <= x.shape[-1]:
        raise ValueError(f"cannot keep {k} PCA components of {x.shape[-1]}-channel features")
    rows = x.reshape(-1, x.shape[-1]).double()
    mean = rows.mean(0)
    _, values, vt = torch.linalg.svd(rows - mean, full_matrices=False)
    basis = torch.zeros(rows.shape[1], k, dtype=torch.float64, device=x.device)
    kept = min(k, vt.shape[0])
    basis[:, :kept] = vt[:kept].T
    signs = torch.sign(basis.gather(0, basis.abs().argmax(0, keepdim=True)))
    basis = basis * torch.where(signs == 0, torch.ones_like(signs), signs)
    variance = values.square()
    explained = float(variance[:kept].sum() / variance.sum().clamp_min(1e-300))
    return mean.to(x.dtype), basis.to(x.dtype), explained
