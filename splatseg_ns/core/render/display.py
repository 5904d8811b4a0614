"""What the viewer shows instead of the scene's own colours: feature PCA, segment colours, a tint.

Displays replace Gaussian tensors, never edit them: `colour_params` gives the SH coefficients that
render as given constant colours, `tinted` blends the selected Gaussians' colours towards the
highlight exactly as rendered, `hidden_opacities` pushes Gaussians below the rasteriser's 1/255
alpha cut. The feature PCA is fitted once per run (`fit_feature_pca`), so colours do not flicker
between frames the way a per-image PCA (nerfstudio's colormap for > 3 channels) does.

Colour spaces follow splatfacto: with SH (sh_degree > 0) colour = SH_C0 * dc + (higher terms) +
0.5; with sh_degree 0 the DC holds colour logits.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from splatseg_ns.core.io.ply import SH_C0
from splatseg_ns.core.pca import principal_axes

HIGHLIGHT_COLOUR = (1.0, 0.3, 0.05)
HIGHLIGHT_STRENGTH = 0.6
HIDDEN_OPACITY_LOGIT = -30.0
"""sigmoid(-30) ~ 1e-13: far below the 1/255 alpha at which the rasteriser skips a Gaussian."""

FeaturePCA = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@torch.no_grad()
def fit_feature_pca(features: torch.Tensor, max_samples: int = 100_000, seed: int = 0) -> FeaturePCA:
    """(mean [D], basis [D, 3], low [3], high [3]): a colour projection of unit features, fitted once.

    The 3 principal directions (`pca.principal_axes`) of a sample of the L2-normalised features,
    and the 1st/99th percentiles of the projections as the colour range.
    """
    unit = F.normalize(features.detach().float(), dim=-1)
    if unit.shape[0] > max_samples:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        unit = unit[torch.randperm(unit.shape[0], generator=generator)[:max_samples].to(unit.device)]
    mean, basis, _ = principal_axes(unit, min(3, unit.shape[1]))
    if basis.shape[1] < 3:
        basis = torch.cat([basis, basis.new_zeros(basis.shape[0], 3 - basis.shape[1])], dim=1)
    projected = (unit - mean) @ basis
    low, high = torch.quantile(projected, 0.01, dim=0), torch.quantile(projected, 0.99, dim=0)
    return mean, basis, low, torch.maximum(high, low + 1e-6)


@torch.no_grad()
def pca_colours(features: torch.Tensor, pca: FeaturePCA) -> torch.Tensor:
    """rgb [N, 3] in [0, 1] of features [N, D] under a projection from `fit_feature_pca`."""
    mean, basis, low, high = pca
    projected = (F.normalize(features.detach().float(), dim=-1) - mean) @ basis
    return ((projected - low) / (high - low)).clamp(0.0, 1.0)


def rgb_to_dc(rgb: torch.Tensor, sh_degree: int) -> torch.Tensor:
    """The DC coefficient that renders as `rgb` [N, 3] (with no higher SH terms), in the model's colour space."""
    if sh_degree > 0:
        return (rgb - 0.5) / SH_C0
    return torch.logit(rgb.clamp(1e-4, 1 - 1e-4))


@torch.no_grad()
def colour_params(rgb: torch.Tensor, features_rest: torch.Tensor, sh_degree: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features_dc, features_rest) that render as the constant colours rgb [N, 3]."""
    return rgb_to_dc(rgb, sh_degree), torch.zeros_like(features_rest)


@torch.no_grad()
def tinted(
    selected: torch.Tensor, features_dc: torch.Tensor, features_rest: torch.Tensor, sh_degree: int,
    colour: Tuple[float, float, float] = HIGHLIGHT_COLOUR, strength: float = HIGHLIGHT_STRENGTH,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(features_dc, features_rest) with the selected Gaussians' colours blended towards `colour`.

    With SH the colour is affine in (dc, rest), so blending the coefficients blends the rendered
    colour exactly; with colour logits the blend happens on the sigmoid.
    """
    highlight = torch.tensor(colour, device=features_dc.device, dtype=features_dc.dtype)
    if sh_degree > 0:
        dc = (1 - strength) * features_dc + strength * rgb_to_dc(highlight, sh_degree)
        rest = (1 - strength) * features_rest
    else:
        dc = rgb_to_dc((1 - strength) * torch.sigmoid(features_dc) + strength * highlight, sh_degree)
        rest = features_rest
    return (torch.where(selected[:, None], dc, features_dc),
            torch.where(selected[:, None, None], rest, features_rest))


@torch.no_grad()
def hidden_opacities(opacities: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """Opacity logits [N, 1] with the Gaussians not `visible` pushed below the rasteriser's alpha cut."""
    return torch.where(visible[:, None], opacities, torch.full_like(opacities, HIDDEN_OPACITY_LOGIT))
