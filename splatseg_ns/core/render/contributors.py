"""The Gaussians one pixel is made of, and each one's weight there, without rendering the image.

A click needs one pixel, not a frame: which Gaussians the rasteriser blends at that pixel, front
to back, and the weight alpha_i T_i each gets. `pixel_contributors` answers that in three steps:

1. with a `GaussianGrid` (cells of Gaussians, built once per scene), only the cells whose
   Gaussians could reach the pixel's ray are visited, so a click costs far less than one pass
   over millions of Gaussians;
2. a cull of their Gaussians: project the centres and keep those whose alpha >= 1/255 ellipse
   could hold the pixel, with a radius bound from each Gaussian's largest scale (EWA's 2D
   covariance J Sigma J^T has largest eigenvalue at most |J|_2^2 s_max^2, and for the pinhole
   Jacobian J at (x, y, z), |J|_2^2 <= max(fx, fy)^2 (z^2 + x^2 + y^2) / z^4);
3. for those left, front to back by depth in chunks (256, then twice as many each time) until the
   pixel is opaque, the rasteriser's exact rules (`rasterize.project_gaussians`, gsplat's 16-pixel
   tile test, alpha = min(0.999, o exp(-sigma)) skipped below 1/255, depth order with ties in index
   order, stop before transmittance would reach 1e-4), so the weights are those a full render blends
   at that pixel, and the Gaussians hidden behind it are never projected.

`click_candidate` then picks the candidate that the contributors carry most weight for, leaving
out the Gaussians that belong to no candidate: a floater in front of an object, or a background
Gaussian, cannot steal the click from what lies behind it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from splatseg_ns.core.render.rasterize import (
    ALPHA_MAX,
    ALPHA_MIN,
    TRANSMITTANCE_MIN,
    project_gaussians,
    quat_scale_to_covar,
)

TILE_SIZE = 16
"""gsplat's tile: a Gaussian reaches every pixel of the tiles its 3-sigma box overlaps."""
ALPHA_SIGMAS = math.sqrt(2.0 * math.log(255.0))
"""alpha = o exp(-d^2 / 2) >= 1/255 needs the pixel within this many sigmas (3.33) of the centre."""
FIRST_CHUNK = 256
"""Gaussians projected at once, front to back (then twice as many each time): the pixel is usually opaque
long before the cull's survivors run out, and the rest need not be projected."""
GRID_SLACK_PX = 3.0
"""Pixels of footprint that do not shrink with the Gaussian: eps2d's blur (3.33 sqrt(0.3) = 1.8 px) and
a pixel of rounding."""


@dataclass(frozen=True)
class GaussianGrid:
    """The Gaussians sorted into cells of a regular grid, each non-empty cell with a bounding sphere of
    everything its Gaussians can reach, so a pixel's ray visits few cells (`candidates`).

    order [N]: Gaussian indices, cell by cell; starts, counts [C]: each non-empty cell's slice of
    `order`; centres [3, C] and spreads [C]: the sphere around the cell's Gaussian centres; scales [C]:
    the largest scale of its Gaussians. means [3, N] and max_scale [N]: the Gaussians' centres and
    largest scales in `order`, so a click's cull reads contiguous runs. Coordinates are stored as rows
    of x, y, z: torch's CPU kernels are several times faster on [3, N] than on [N, 3].
    """

    order: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor
    centres: torch.Tensor
    spreads: torch.Tensor
    scales: torch.Tensor
    means: torch.Tensor
    max_scale: torch.Tensor

    @classmethod
    @torch.no_grad()
    def build(cls, means: torch.Tensor, max_scale: torch.Tensor, per_cell: int = 48) -> "GaussianGrid":
        """About `per_cell` Gaussians in an occupied cell; the grid spans the 1st-99th percentiles (outliers
        join border cells, whose spheres cover them). Gaussians lie on surfaces, which occupy a small share
        of a volume's cells, so the grid is refined until occupied cells hold about `per_cell`."""
        n, device = means.shape[0], means.device
        sample = means if n <= 200_000 else means[torch.randperm(n, device=device)[:200_000]]
        low, high = torch.quantile(sample.float(), 0.01, dim=0), torch.quantile(sample.float(), 0.99, dim=0)
        side = max(4, round((n / per_cell) ** (1.0 / 3.0)))
        for _ in range(4):
            cell = ((means - low) / (high - low).clamp_min(1e-9) * side).long().clamp(0, side - 1)
            keys = (cell[:, 0] * side + cell[:, 1]) * side + cell[:, 2]
            crowd = n / torch.unique(keys).numel()
            if crowd < 2 * per_cell or side >= 512:
                break
            side = min(512, int(side * (crowd / per_cell) ** 0.5))  # surfaces: occupied cells grow as side^2
        keys, order = torch.sort(keys, stable=True)
        cells, counts = torch.unique_consecutive(keys, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        member = torch.repeat_interleave(torch.arange(cells.numel(), device=device), counts)
        sorted_means, sorted_scale = means[order], max_scale[order].to(means.dtype)
        dtype = means.dtype
        lo = torch.full((cells.numel(), 3), float("inf"), device=device, dtype=dtype).scatter_reduce(
            0, member[:, None].expand(-1, 3), sorted_means, "amin")
        hi = torch.full((cells.numel(), 3), float("-inf"), device=device, dtype=dtype).scatter_reduce(
            0, member[:, None].expand(-1, 3), sorted_means, "amax")
        scales = torch.zeros(cells.numel(), device=device, dtype=dtype).scatter_reduce(0, member, sorted_scale, "amax")
        return cls(order, starts, counts, ((lo + hi) / 2).T.contiguous(), (hi - lo).norm(dim=-1) / 2, scales,
                   sorted_means.T.contiguous(), sorted_scale)

    @torch.no_grad()
    def candidates(self, viewmat: torch.Tensor, direction: torch.Tensor, pixel_angle: float,
                   tan_limits: Tuple[float, float], near_plane: float) -> torch.Tensor:
        """Positions in `order` (cell by cell) of the Gaussians in cells whose footprints could reach the
        camera ray through a pixel: `direction` (unit, camera frame); `pixel_angle`: a pixel's width per
        unit of depth (1 / focal length); `tan_limits`: gsplat's clamp of the view angle in the Jacobian.

        A Gaussian of largest scale s at depth z covers at most 3.33 sigmas of its 2D footprint, whose
        sigma is at most |J|_2 s with |J|_2 z / f <= sqrt(1 + tan_x^2 + tan_y^2) (the clamped angles of
        any point of the cell): laterally, 3.33 s sqrt(1 + tan^2) + GRID_SLACK_PX pixels of depth z.
        """
        R, t = viewmat[:3, :3].to(self.centres.dtype), viewmat[:3, 3].to(self.centres.dtype)
        cam = R @ self.centres + t[:, None]  # [3, C]: cell centres in the camera frame
        along = direction.to(cam.dtype) @ cam
        across_sq = (cam * cam).sum(dim=0) - along * along  # squared distance from the ray's line
        z_near = cam[2] - self.spreads
        ahead = z_near > 1e-6
        safe = z_near.clamp_min(1e-6)
        tan_x = torch.where(ahead, (cam[0].abs() + self.spreads) / safe, torch.full_like(safe, tan_limits[0]))
        tan_y = torch.where(ahead, (cam[1].abs() + self.spreads) / safe, torch.full_like(safe, tan_limits[1]))
        jacobian = torch.sqrt(1.0 + tan_x.clamp(max=tan_limits[0]).square() + tan_y.clamp(max=tan_limits[1]).square())
        depth = (along + self.spreads).clamp_min(0)
        reach = self.spreads + (ALPHA_SIGMAS * 1.01) * jacobian * self.scales + GRID_SLACK_PX * pixel_angle * depth
        hit = (along + self.spreads >= near_plane) & (across_sq <= reach * reach)
        cells = hit.nonzero().squeeze(-1)
        counts = self.counts[cells]
        if cells.numel() == 0:
            return torch.zeros(0, dtype=torch.long, device=self.spreads.device)
        first = torch.repeat_interleave(self.starts[cells] - (torch.cumsum(counts, 0) - counts), counts)
        return torch.arange(int(counts.sum()), device=self.spreads.device) + first


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
    grid: Optional[GaussianGrid] = None,
) -> PixelContributors:
    """The Gaussians blended at pixel (column, row) of a [height, width] render, and their weights.

    means [N, 3], quats [N, 4], scales [N, 3] (linear, not log), opacities [N] (in [0, 1]):
    what `rasterize` takes; viewmat [4, 4] world-to-camera, K [3, 3]. max_scale [N]: the largest
    of each Gaussian's scales, or grid: a `GaussianGrid` of these Gaussians (which holds them), when
    the caller keeps one (neither depends on the click); without a grid every Gaussian is culled.
    """
    device = means.device
    R, t = viewmat[:3, :3].to(means.dtype), viewmat[:3, 3].to(means.dtype)
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    px, py = column + 0.5, row + 0.5
    if grid is None:
        sub_means, scale_sq = means.T, (scales.amax(dim=-1) if max_scale is None else max_scale).square()
    else:
        ray = torch.tensor([(px - cx) / fx, (py - cy) / fy, 1.0], dtype=means.dtype, device=device)
        # gsplat's Jacobian clamp (project_gaussians): |x / z| <= (W - cx) / fx + 0.3 W / (2 fx), and so on.
        limits = (max(width - cx, cx) / fx + 0.15 * width / fx, max(height - cy, cy) / fy + 0.15 * height / fy)
        slots = grid.candidates(viewmat, ray / ray.norm(), 1.0 / min(fx, fy), limits, near_plane)
        sub_means, scale_sq = grid.means[:, slots], grid.max_scale[slots].square()
    x, y, z = R @ sub_means + t[:, None]  # camera-space centres
    # Offsets from the pixel in pixels times depth, and the reach of the alpha >= 1/255 ellipse times depth:
    # 3.33 sigma <= 3.33 sqrt(|J|_2^2 s^2 + eps2d) with |J|_2^2 <= max(fx, fy)^2 (z^2 + x^2 + y^2) / z^4 (the
    # Jacobian's clamped angles only make it smaller).
    zz = z * z
    jacobian_sq = max(fx, fy) ** 2 * (zz + x * x + y * y)  # bounds |J|_2^2 z^4
    reach = (ALPHA_SIGMAS * 1.01) * torch.sqrt(jacobian_sq * scale_sq / zz.clamp_min(1e-30) + eps2d * zz) + z
    near = (z >= near_plane) & (z <= far_plane)
    culled = near & ((fx * x + (cx - px) * z).abs() <= reach) & ((fy * y + (cy - py) * z).abs() <= reach)
    found = culled.nonzero().squeeze(-1)
    depth, by_depth = torch.sort(z[found])  # front to back by centre depth
    index = found[by_depth] if grid is None else grid.order[slots[found[by_depth]]]
    ids, weights = [], []
    transmittance = torch.ones(1, dtype=means.dtype, device=device)
    start, size = 0, FIRST_CHUNK
    while start < index.numel():  # front to back, chunk by chunk, until the render would stop
        # A chunk ends between distinct depths (the render orders ties by index; rounding aside).
        end = start + size if start + size >= index.numel() else int(
            torch.searchsorted(depth, depth[start + size - 1] * (1 + 1e-6) + 1e-12, right=True))
        chunk_ids, chunk_weights, transmittance, stopped = _blend_chunk(
            torch.sort(index[start:end]).values, transmittance, means, quats, scales, opacities, viewmat, K,
            width, height, column, row, eps2d, near_plane, far_plane, rasterize_mode)
        ids.append(chunk_ids)
        weights.append(chunk_weights)
        if stopped:
            break
        start, size = end, size * 2
    if not ids:
        return PixelContributors(torch.zeros(0, dtype=torch.long, device=device), torch.zeros(0, dtype=means.dtype, device=device))
    return PixelContributors(torch.cat(ids), torch.cat(weights))


def _blend_chunk(index, transmittance, means, quats, scales, opacities, viewmat, K, width, height, column, row,
                 eps2d, near_plane, far_plane, rasterize_mode):
    """(ids, weights, transmittance after them, whether the render stops in this chunk) of the Gaussians
    `index` (ascending; all behind the ones blended before) at pixel (column, row), with the rasteriser's
    exact rules, starting from `transmittance` [1]."""
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
    px, py = column + 0.5, row + 0.5
    dx, dy = means2d[:, 0] - px, means2d[:, 1] - py
    a, b, c = conics.unbind(-1)
    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
    alpha = (op * torch.exp(-sigma)).clamp(max=ALPHA_MAX)
    live = in_tiles & (sigma >= 0) & (alpha >= ALPHA_MIN)
    index, alpha, depths = index[live], alpha[live], depths[live]
    order = torch.sort(depths, stable=True).indices  # front to back, ties in index order
    index, alpha = index[order], alpha[order]
    after = torch.cumprod(torch.cat([transmittance, 1.0 - alpha]), dim=0)
    before, after = after[:-1], after[1:]
    keep = after > TRANSMITTANCE_MIN  # gsplat stops before the Gaussian that would take T to <= 1e-4
    if bool(keep.all()):
        return index, alpha * before, after[-1:] if after.numel() else transmittance, False
    stop = int((~keep).nonzero()[0])
    return index[:stop], alpha[:stop] * before[:stop], before[stop:stop + 1], True


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
