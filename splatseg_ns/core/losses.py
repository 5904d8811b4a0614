"""Click-Gaussian's two-level contrastive loss on rendered feature maps.

Click-Gaussian (Choi et al., ECCV 2024, arXiv 2407.11793), Sec. 3.2: per level l, pixels whose
SAM masks agree are pulled together (mean cosine similarity) and pixels of different masks are
pushed apart only while their similarity exceeds a margin tau_l (0.5 coarse, 0.75 fine),
with weight 0.1 on the push. The fine feature is the whole vector (coarse part + the rest:
the granularity prior); in the fine push the coarse part is stop-gradiented so that fine
negatives, which may share an object, cannot tear the object's coarse feature apart.
Pixels are importance-sampled so that small masks are seen as often as large ones.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F


def sample_pixels(
    coarse_ids: torch.Tensor,
    fine_ids: torch.Tensor,
    num_samples: int,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Flat pixel indices, drawn with probability inversely proportional to their masks' areas.

    Each level contributes half the weight of a pixel: 1 / area of its coarse mask plus
    1 / area of its fine mask (unmasked pixels, id 0, contribute nothing). Returns an empty
    tensor when no pixel carries a mask.
    """
    weights = torch.zeros(coarse_ids.numel(), dtype=torch.float32, device=coarse_ids.device)
    for ids in (coarse_ids.reshape(-1).long(), fine_ids.reshape(-1).long()):
        area = torch.bincount(ids)
        per_pixel = 1.0 / area[ids].float()
        weights += torch.where(ids > 0, per_pixel, torch.zeros_like(per_pixel))
    if weights.sum() <= 0:
        return torch.zeros(0, dtype=torch.long, device=coarse_ids.device)
    num_samples = min(num_samples, int((weights > 0).sum()))
    return torch.multinomial(weights, num_samples, replacement=False, generator=generator)


def contrastive_level_loss(
    features: torch.Tensor,
    ids: torch.Tensor,
    margin: float,
    negative_weight: float,
    push_features: Optional[torch.Tensor] = None,
) -> Dict[str, torch.Tensor]:
    """Pull same-mask pairs together, push different-mask pairs below `margin` (cosine).

    features: [P, D] rendered features of sampled pixels; ids: [P] mask ids (0 = no mask, such
    pixels take part in no pair). `push_features` (default: `features`) is used for the push
    term, so the caller can stop gradients through part of it.
    Returns {"pull": -mean cos over positives, "push": weight * mean 1[cos > margin] cos over negatives}.
    """
    valid = ids > 0
    f = F.normalize(features[valid], dim=-1)
    g = f if push_features is None else F.normalize(push_features[valid], dim=-1)
    ids = ids[valid]
    zero = features.sum() * 0.0
    if ids.numel() < 2:
        return {"pull": zero, "push": zero}
    same = ids[:, None] == ids[None, :]
    same.fill_diagonal_(False)
    different = ids[:, None] != ids[None, :]
    pull = -(f @ f.T)[same].mean() if same.any() else zero
    if different.any():
        cos = (g @ g.T)[different]
        push = negative_weight * (cos * (cos > margin)).mean()
    else:
        push = zero
    return {"pull": pull, "push": push}


def two_level_contrastive_loss(
    features: torch.Tensor,
    coarse_ids: torch.Tensor,
    fine_ids: torch.Tensor,
    coarse_dim: int,
    margin_coarse: float = 0.5,
    margin_fine: float = 0.75,
    negative_weight: float = 0.1,
) -> Dict[str, torch.Tensor]:
    """Click-Gaussian's contrastive loss at both levels on sampled pixels.

    features: [P, D] with D > coarse_dim; the coarse feature is features[:, :coarse_dim] and the
    fine one all D channels. Returns the four terms by name (sum them for the loss).
    """
    coarse = contrastive_level_loss(features[:, :coarse_dim], coarse_ids, margin_coarse, negative_weight)
    fine_push = torch.cat([features[:, :coarse_dim].detach(), features[:, coarse_dim:]], dim=-1)
    fine = contrastive_level_loss(features, fine_ids, margin_fine, negative_weight, push_features=fine_push)
    return {
        "contrastive_coarse_pull": coarse["pull"],
        "contrastive_coarse_push": coarse["push"],
        "contrastive_fine_pull": fine["pull"],
        "contrastive_fine_push": fine["push"],
    }
