"""The Gaussians one pixel is made of, and each one's weight there, without rendering the image.

A click needs one pixel, not a frame: which Gaussians the rasteriser blends at that pixel, front
to back, and the weight alpha_i T_i each gets. `pixel_contributors` answers that in two steps:

1. a cull over all Gaussians that costs a few passes over their positions: project the centres
   and keep those whose footprint could reach the pixel's tile, with a radius bound from each
   Gaussian's largest scale (EWA's 2D covariance J Sigma J^T has largest eigenvalue at most
   |J|_F^2 s_max^2);
2. for the few hundred left, the rasteriser's exact rules (`rasterize.project_gaussians`, gsplat's
   16-pixel tile test, alpha = min(0.999, o exp(-sigma)) skipped below 1/255, depth order with
   ties in index order, stop before transmittance would reach 1e-4), so the weights are those a
   full render blends at that pixel.

`click_candidate` then picks the candidate that the contributors carry most weight for, leaving
out the Gaussians that belong to no candidate: a floater in front of an object, or a background
Gaussian, cannot steal the click from what lies behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from splatseg_ns.core.rasterize import ALPHA_MAX, ALPHA_MIN, TRANSMITTANCE_MIN, project_gaussians, quat_scale_to_covar

TILE_SIZE = 16
"""gsplat's tile: a Gaussian reaches every pixel of the tiles its 3-sigma box overlaps."""


@dataclass(frozen=True)
class PixelContributors:
    """ids [M] long (indices of the Gaussians, front to back) and weights [M]: alpha_i T_i at the pixel."""

    ids: torch.Tensor
    weights: torch.Tensor

    @property
    def opacity(self) -> float:
        """The rendered opacity (accumulated alpha) at the pixel."""
        return float(self.weights.sum())

    def blend(self, values: torch.Tensor) -> torch.Tensor:
        """What the render shows at the pixel for per-Gaussian values [N, C] (zero background): [C]."""
        return (self.weights[:, None].to(values.dtype) * values[self.ids]).sum(dim=0)


@torch.no_grad()
def pixel_contributors(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    viewmat: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    column: int,
    row: int,
    max_scale: Optional[torch.Tensor] = None,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    rasterize_mode: str = "classic",
) -> PixelContributors:
    """The Gaussians blended at pixel (column, row) of a [height, width] render, and their weights.

    means [N, 3], quats [N, 4], scales [N, 3] (linear, not log), opacities [N] (in [0, 1]):
    what `rasterize` takes; viewmat [4, 4] world-to-camera, K [3, 3]. max_scale [N]: the largest
    of each Gaussian's scales, when the caller keeps it (it does not depend on the click).
    """
    device = means.device
    if max_scale is None:
        max_scale = scales.amax(dim=-1)
    R, t = viewmat[:3, :3].to(means.dtype), viewmat[:3, 3].to(means.dtype)
    p = torch.addmm(t, means, R.T)  # camera-space centres [N, 3]
    x, y, z = p.unbind(-1)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    px, py = column + 0.5, row + 0.5
    # Offsets from the pixel in pixels times depth, and the radius bound times depth (all >= 0):
    # radius <= 3 sqrt(|J|_F^2 s^2 + eps2d) + 1 with |J|_F^2 <= (fx^2 (z^2 + x^2) + fy^2 (z^2 + y^2)) / z^4.
    zz = z * z
    jacobian_sq = (fx * fx) * (zz + x * x) + (fy * fy) * (zz + y * y)  # |J|_F^2 z^4
    reach = 3.0 * torch.sqrt(jacobian_sq * max_scale.square() / zz.clamp_min(1e-30) + eps2d * zz) + (1.0 + 2 * TILE_SIZE) * z
    near = (z >= near_plane) & (z <= far_plane)
    candidates = near & ((fx * x + (cx - px) * z).abs() <= reach) & ((fy * y + (cy - py) * z).abs() <= reach)
    index = candidates.nonzero().squeeze(-1)
    if index.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return PixelContributors(empty, torch.zeros(0, dtype=means.dtype, device=device))

    covars = quat_scale_to_covar(quats[index], scales[index])
    proj = project_gaussians(means[index], covars, viewmat[None], K[None], width, height, eps2d=eps2d,
                             near_plane=near_plane, far_plane=far_plane,
                             calc_compensations=rasterize_mode == "antialiased")
    radii, means2d, depths, conics = proj.radii[0], proj.means2d[0], proj.depths[0], proj.conics[0]
    op = opacities[index] * (proj.compensations[0] if proj.compensations is not None else 1.0)

    # gsplat's tile test (isect_tiles): the pixel's tile lies in the Gaussian's tile box.
    tiles_x, tiles_y = math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)
    r = radii.to(means2d.dtype) / TILE_SIZE
    tx, ty = means2d[:, 0] / TILE_SIZE, means2d[:, 1] / TILE_SIZE
    tile_x, tile_y = column // TILE_SIZE, row // TILE_SIZE
    in_tiles = (
        (radii > 0)
        & (torch.floor(tx - r).clamp(0, tiles_x) <= tile_x) & (tile_x < torch.ceil(tx + r).clamp(0, tiles_x))
        & (torch.floor(ty - r).clamp(0, tiles_y) <= tile_y) & (tile_y < torch.ceil(ty + r).clamp(0, tiles_y))
    )
    dx, dy = means2d[:, 0] - px, means2d[:, 1] - py
    a, b, c = conics.unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = (op * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
    live = in_tiles & (sigma >= 0) & (alpha >= ALPHA_MIN)
    index, alpha, depths = index[live], alpha[live], depths[live]
    order = torch.sort(depths, stable=True).indices  # front to back, ties in index order
    index, alpha = index[order], alpha[order]
    after = torch.cumprod(1.0 - alpha, dim=0)
    before = torch.cat([after.new_ones(1), after[:-1]])
    keep = after > TRANSMITTANCE_MIN  # gsplat stops before the Gaussian that would take T to <= 1e-4
    if not bool(keep.all()):
        stop = int((~keep).nonzero()[0])
        index, alpha, before = index[:stop], alpha[:stop], before[:stop]
    return PixelContributors(index, alpha * before)


@torch.no_grad()
def click_candidate(contributors: PixelContributors, assignment: torch.Tensor, num_candidates: int):
    """(candidate, its weight): the candidate the pixel's contributors carry most weight for, counting
    only the Gaussians assigned to one (assignment [N], -1 = none); (-1, 0.0) when none is."""
    labels = assignment[contributors.ids]
    counted = (labels >= 0) & (labels < num_candidates)
    if not bool(counted.any()):
        return -1, 0.0
    per_candidate = torch.zeros(num_candidates, dtype=contributors.weights.dtype, device=labels.device)
    per_candidate.index_add_(0, labels[counted], contributors.weights[counted])
    weight, best = per_candidate.max(dim=0)
    return int(best), float(weight)
