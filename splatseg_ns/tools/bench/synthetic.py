"""Synthetic data shaped like a trained scene: features around random global candidates, a scene of Gaussians
in front of a camera."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

GENERATE_CHUNK = 1 << 18
FEATURE_NOISE = 0.05  # per channel: |noise| ~ 0.25 on unit centres, so most Gaussians keep their centre
SH_REST_BASES = 15  # SH degree 3: (3 + 1)^2 - 1 higher bases per colour channel, 45 floats


@torch.no_grad()
def synthetic_features(n: int, centers: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[n, D] features around random candidates, filled in chunks (no [n, D] temporaries)."""
    features = torch.empty(n, centers.shape[1], device=centers.device)
    for start in range(0, n, GENERATE_CHUNK):
        m = min(GENERATE_CHUNK, n - start)
        labels = torch.randint(0, centers.shape[0], (m,), generator=gen, device=centers.device)
        noise = torch.randn(m, centers.shape[1], generator=gen, device=centers.device)
        features[start : start + m] = centers[labels] + FEATURE_NOISE * noise
    return features


@torch.no_grad()
def synthetic_scene(n: int, resolution: int, gen: torch.Generator, device: torch.device) -> Dict[str, torch.Tensor]:
    """Gaussians on surfaces, as a reconstruction has them: the spheres of eight objects 2 to 4 units in front
    of a pinhole camera with a 90-degree field of view, and a wall behind them; sizes scaling as N^(-1/2)
    (2 cm at 100k), as a denser reconstruction of the same surfaces would; random orientations, opacities
    0.05-0.95."""
    spheres = torch.rand(8, 4, generator=gen, device=device) * torch.tensor([1.6, 1.6, 1.6, 0.3], device=device)
    spheres += torch.tensor([-0.8, -0.8, 2.2, 0.25], device=device)
    on_wall = torch.rand(n, generator=gen, device=device) < 0.3
    which = torch.randint(0, 8, (n,), generator=gen, device=device)
    directions = F.normalize(torch.randn(n, 3, generator=gen, device=device), dim=-1)
    means = spheres[which, :3] + spheres[which, 3:] * directions
    wall = torch.rand(n, 3, generator=gen, device=device) * torch.tensor([5.0, 5.0, 0.0], device=device)
    means = torch.where(on_wall[:, None], wall + torch.tensor([-2.5, -2.5, 4.5], device=device), means)
    quats = torch.randn(n, 4, generator=gen, device=device)
    size = 0.02 * (1e5 / n) ** 0.5
    scales = torch.empty(n, 3, device=device).uniform_(0.5 * size, 1.5 * size, generator=gen)
    opacities = torch.rand(n, generator=gen, device=device) * 0.9 + 0.05
    f = resolution / 2.0
    K = torch.tensor([[f, 0.0, resolution / 2.0], [0.0, f, resolution / 2.0], [0.0, 0.0, 1.0]], device=device)
    return {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "K": K,
            "viewmat": torch.eye(4, device=device)}
