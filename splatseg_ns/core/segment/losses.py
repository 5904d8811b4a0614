"""Click-Gaussian's two-level contrastive loss on rendered feature maps.

Click-Gaussian (Choi et al., ECCV 2024, arXiv 2407.11793), Sec. 3.2: per level l, pixels whose
SAM masks agree are pulled together (mean cosine similarity) and pixels of different masks are
pushed apart only while their similarity exceeds a margin tau_l (0.5 coarse, 0.75 fine),
with weight 0.1 on the push. The fine feature is the whole vector (coarse part + the rest:
the granularity prior); in the fine push the coarse part is stop-gradiented so that fine
negatives, which may share an object, cannot tear the object's coarse feature apart.
Pixels are importance-sampled so that small masks are seen as often as large ones.

Also the paper's regularisers: 3D and 2D feature norms and spatial smoothness over
each Gaussian's nearest neighbours (`knn_indices` precomputes them; positions are frozen);
the DINO distillation term of the optional second feature (`dino_distillation_loss`); and
`check_finite_features`, the guard against a diverged training that training, selection and
export share.
"""

from __future__ import annotations

import math
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F


class NonFiniteFeaturesError(ValueError):
    """Per-Gaussian features with NaN/inf values: the feature training diverged."""


_FEATURE_NAMES = {"seg_features": "segmentation features", "dino_features": "DINO features"}


@torch.no_grad()
def check_finite_features(
    features: torch.Tensor, source: str = "", step: Optional[int] = None, param: str = "seg_features"
) -> None:
    """Refuse NaN/inf features, naming how many Gaussians have them and what to do.

    A NaN feature has NaN cosines to everything, so every argmax, cluster and selection built on
    it is arbitrary, and a checkpoint saved with it overwrites the last good one: failing here
    beats a silently wrong result. One `isfinite` pass over [N, D] and one host sync.
    `source` (the run's config.yml, or the training step) starts the message; `param` is the
    Gaussian parameter the features are (its optimizer's learning rate is the fix).
    """
    if bool(torch.isfinite(features).all()):
        return
    rows = features.reshape(features.shape[0], -1) if features.ndim > 0 else features.reshape(1, 1)
    bad = int((~torch.isfinite(rows).all(dim=-1)).sum())
    when = f" by step {step}" if step is not None else ""
    flag = f"--optimizers.{param.replace('_', '-')}.optimizer.lr"
    raise NonFiniteFeaturesError(
        f"{source + ': ' if source else ''}{bad} of {rows.shape[0]} Gaussians have NaN/inf "
        f"{_FEATURE_NAMES.get(param, param)} (the feature training diverged{when}). Retrain the features with a "
        f"lower learning rate ({flag}), or resume from an earlier checkpoint of the run "
        "(ns-train ... --load-checkpoint FILE)."
    )


def mask_interiors(ids: torch.Tensor, border_px: int) -> torch.Tensor:
    """ids [H, W] with the pixels within `border_px` (chessboard) of another id set to 0 (no mask), except
    that a mask thinner than that keeps its deepest pixels (the largest erosion that leaves it some).

    Automatic masks' borders are off by 1-3 px both ways (SAM's automatic masks reach IoU > 0.9 with
    corrected ones for 94% of masks): a border pixel's id is a guess, and a mask dilated over its
    neighbour makes positive pairs of two objects. The image's edge is no border."""
    if border_px <= 0:
        return ids
    flat = ids.long()
    padded = flat[None, None].float()
    kept = torch.zeros_like(flat)
    remaining = flat > 0
    for reach in range(int(border_px), -1, -1):
        inside = remaining
        if reach > 0:
            inside = remaining & (_window_max(padded, reach) == -_window_max(-padded, reach))
        has_inside = torch.zeros(int(flat.max()) + 1, dtype=torch.bool, device=flat.device)
        has_inside[flat[inside]] = True  # the masks that keep pixels at this erosion
        settled = has_inside[flat]
        kept = torch.where(inside & settled, flat, kept)
        remaining &= ~settled
        if not bool(remaining.any()):
            break
    return kept.to(ids.dtype)


def _window_max(image: torch.Tensor, reach: int) -> torch.Tensor:
    """[H, W]: the maximum of `image` [1, 1, H, W] over each pixel's (2 reach + 1)^2 window, the edge
    replicated; as a row pass then a column pass (2.3x faster than one square pool at 1080p)."""
    window = 2 * reach + 1
    rows = F.max_pool2d(F.pad(image, (reach, reach, 0, 0), mode="replicate"), (1, window), 1)
    return F.max_pool2d(F.pad(rows, (0, 0, reach, reach), mode="replicate"), (window, 1), 1)[0, 0]


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
    push_block: int = 0,
    push_groups: Optional[torch.Tensor] = None,
    pull_trim: float = 0.0,
) -> Dict[str, torch.Tensor]:
    """Pull same-mask pairs together, push different-mask pairs below `margin` (cosine).

    features: [P, D] rendered features of sampled pixels; ids: [P] mask ids (0 = no mask, such
    pixels take part in no pair). `push_features` (default: `features`) is used for the push
    term, so the caller can stop gradients through part of it.
    push_block: when > 0 and smaller than P, the push averages over the negative pairs inside
    consecutive blocks of that many samples instead of all P^2 pairs. The samples come in random
    order (`sample_pixels`), so the blocks' pairs are a uniform sample of all pairs: the same mean
    in expectation, at P * push_block instead of P^2 cost.
    push_groups: [P] ids of enclosing masks (the coarse masks, for the fine level): when given, the push
    counts only the negative pairs inside one group, so its mean is over the pairs it is there for;
    group 0 (no enclosing mask) is no group, its pixels take part in no push.
    pull_trim: the share of each mask's samples farthest (cosine) from the mask's mean feature that take
    part in no pull: where a mask covers two things (a mug merged with its table), the minority that the
    other views already tell apart is not pulled into the majority.
    Returns {"pull": -mean cos over positives, "push": weight * mean 1[cos > margin] cos over negatives}.
    """
    valid = ids > 0
    groups = push_groups[valid] if push_groups is not None else None
    f = F.normalize(features[valid], dim=-1)
    g = f if push_features is None else F.normalize(push_features[valid], dim=-1)
    _, ids = torch.unique(ids[valid], return_inverse=True)  # ids now 0..M-1
    zero = features.sum() * 0.0
    if ids.numel() < 2:
        return {"pull": zero, "push": zero}
    # Pull, in O(P*D) instead of O(P^2): for unit vectors, the sum of f_i.f_j over ordered pairs
    # i != j inside mask m is |sum_m f|^2 - n_m.
    kept = _consensus(f.detach(), ids, pull_trim) if pull_trim > 0 else torch.ones_like(f[:, 0])
    pulled = f * kept[:, None]
    counts = torch.bincount(ids, weights=kept).to(f.dtype)
    sums = torch.zeros(len(counts), f.shape[1], dtype=f.dtype, device=f.device).index_add_(0, ids, pulled)
    num_positive = (counts * (counts - 1)).sum()
    pull = -((sums * sums).sum() - counts.sum()) / num_positive if num_positive > 0 else zero
    # Push needs each pair's cosine; masks (not gathers) keep a block one dense pass.
    block = push_block if 0 < push_block < ids.numel() else ids.numel()
    total, num_negative = zero, 0
    for start in range(0, ids.numel(), block):
        g_block, ids_block = g[start : start + block], ids[start : start + block]
        different = ids_block[:, None] != ids_block[None, :]
        if groups is not None:
            groups_block = groups[start : start + block]
            different &= (groups_block[:, None] == groups_block[None, :]) & (groups_block > 0)[:, None]
        cos = g_block @ g_block.T
        total = total + cos.masked_fill(~(different & (cos > margin)), 0.0).sum()  # no P x P zeros tensor
        num_negative += int(different.sum())
    push = negative_weight * total / num_negative if num_negative > 0 else zero
    return {"pull": pull, "push": push}


def _consensus(unit: torch.Tensor, ids: torch.Tensor, trim: float) -> torch.Tensor:
    """[P] float 0/1: 0 for the `trim` share of each mask's samples least like the mask's mean feature."""
    num_masks = int(ids.max()) + 1
    means = F.normalize(torch.zeros(num_masks, unit.shape[1], dtype=unit.dtype, device=unit.device)
                        .index_add_(0, ids, unit), dim=-1)
    cos = (unit * means[ids]).sum(dim=1)
    order = torch.argsort(ids.double() * 4.0 + cos.double())  # by mask, then by cosine (cos in [-1, 1])
    counts = torch.bincount(ids, minlength=num_masks)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(ids)
    rank[order] = torch.arange(ids.numel(), device=ids.device) - starts[ids[order]]
    return (rank >= torch.floor(trim * counts[ids].float()).long()).to(unit.dtype)


def two_level_contrastive_loss(
    features: torch.Tensor,
    coarse_ids: torch.Tensor,
    fine_ids: torch.Tensor,
    coarse_dim: int,
    margin_coarse: float = 0.5,
    margin_fine: float = 0.75,
    negative_weight: float = 0.1,
    push_block: int = 0,
    fine_push_within_objects: bool = False,
    pull_trim: float = 0.0,
) -> Dict[str, torch.Tensor]:
    """Click-Gaussian's contrastive loss at both levels on sampled pixels (pull_trim: `contrastive_level_loss`).

    features: [P, D] with D > coarse_dim; the coarse feature is features[:, :coarse_dim] and the
    fine one all D channels. push_block: see `contrastive_level_loss`. fine_push_within_objects: the fine
    push averages over pairs of parts of one coarse mask only (pairs of two objects are already apart
    once the coarse push is met). Returns the four terms by name (sum them for the loss).
    """
    coarse = contrastive_level_loss(features[:, :coarse_dim], coarse_ids, margin_coarse, negative_weight,
                                    push_block=push_block, pull_trim=pull_trim)
    fine_push = torch.cat([features[:, :coarse_dim].detach(), features[:, coarse_dim:]], dim=-1)
    fine = contrastive_level_loss(features, fine_ids, margin_fine, negative_weight, push_features=fine_push,
                                  push_block=push_block, push_groups=coarse_ids if fine_push_within_objects else None,
                                  pull_trim=pull_trim)
    return {
        "contrastive_coarse_pull": coarse["pull"],
        "contrastive_coarse_push": coarse["push"],
        "contrastive_fine_pull": fine["pull"],
        "contrastive_fine_push": fine["push"],
    }


# Click-Gaussian's regularisers (weights 0.2, 0.2, 0.5 in the paper). Like the contrastive push
# above, each takes its weight as an argument defaulting to the paper's value and returns the
# weighted term, so the model sums terms as they come; pass weight=1 for the raw value.


def feature_norm_3d_loss(gaussian_features: torch.Tensor, coarse_dim: int, weight: float = 0.2) -> torch.Tensor:
    """Keep each Gaussian's coarse part and remaining part near unit norm (3D norm regulariser).

    weight * (mean (|f[:, :coarse_dim]| - 1)^2 + mean (|f[:, coarse_dim:]| - 1)^2). Cosine losses
    ignore norms, so without this a part can shrink toward zero and stop counting in the
    rendered (alpha-blended) feature, or grow and dominate the fine feature.
    """
    loss = (gaussian_features[:, :coarse_dim].norm(dim=-1) - 1.0).square().mean()
    if gaussian_features.shape[1] > coarse_dim:
        loss = loss + (gaussian_features[:, coarse_dim:].norm(dim=-1) - 1.0).square().mean()
    return weight * loss


def feature_norm_2d_loss(rendered: torch.Tensor, coarse_dim: int, weight: float = 0.2) -> torch.Tensor:
    """Keep rendered features at the norms of blended unit parts (2D norm regulariser).

    rendered: [P, D] features of sampled pixels. weight * (mean (|r[:, :coarse_dim]| - 1)^2 +
    mean (|r| - sqrt 2)^2): the coarse part near 1 and the fine feature, two unit parts side by
    side, near sqrt 2. Blending features that disagree shortens them, so this also asks the
    Gaussians along a ray to agree.
    """
    coarse = (rendered[:, :coarse_dim].norm(dim=-1) - 1.0).square().mean()
    fine = (rendered.norm(dim=-1) - math.sqrt(2.0)).square().mean()
    return weight * (coarse + fine)


@torch.no_grad()
def knn_indices(means: torch.Tensor, k: int = 5) -> torch.Tensor:
    """The k nearest other Gaussians of every Gaussian in 3D: [N, k] long, on `means`' device.

    Positions are frozen during the feature stage, so the model computes this once and passes
    it to `spatial_smoothness_loss` every step. Uses scipy's cKDTree on the CPU (scipy comes
    with hdbscan/scikit-learn; one thread: ~0.4 s for 100k points, ~5 s for 1M). Without scipy,
    exact torch.cdist in chunks of ~64M distances: quadratic (~85 s for 100k on one CPU core),
    so only a fallback. With fewer than k + 1 Gaussians, k shrinks to N - 1. A Gaussian with a
    non-finite centre (a diverged run) has only itself as neighbours and is no one's neighbour; where
    fewer than k + 1 centres are finite, the missing neighbours are the Gaussian itself.
    """
    num = means.shape[0]
    k = max(0, min(k, num - 1))
    if k == 0:
        return torch.zeros(num, 0, dtype=torch.long, device=means.device)
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        cKDTree = None
    if cKDTree is not None:
        points = means.detach().cpu().double().numpy()
        rows = np.flatnonzero(np.isfinite(points).all(axis=1))
        out = np.repeat(np.arange(num)[:, None], k, axis=1)
        reach = min(k + 1, rows.size)
        if reach >= 2:
            _, index = cKDTree(points[rows]).query(points[rows], k=reach)
            index = torch.from_numpy(np.asarray(index).reshape(rows.size, reach)).long()
            # the point itself is normally column 0, but exact duplicates can put it later
            own = index == torch.arange(rows.size)[:, None]
            own[:, -1] |= ~own.any(dim=1)  # no self among k + 1: drop the farthest instead
            out[rows, : reach - 1] = rows[index[~own].reshape(rows.size, reach - 1).numpy()]
        return torch.from_numpy(out).to(means.device)
    out = torch.empty(num, k, dtype=torch.long, device=means.device)
    chunk_size = max(1, (1 << 26) // num)
    for start in range(0, num, chunk_size):
        dist = torch.cdist(means[start : start + chunk_size], means)
        rows = torch.arange(dist.shape[0], device=means.device)
        dist[rows, rows + start] = float("inf")
        out[start : start + chunk_size] = dist.topk(k, dim=-1, largest=False).indices
    return out


def spatial_smoothness_loss(
    features: torch.Tensor,
    neighbours: torch.Tensor,
    num_samples: int = 100_000,
    generator: Optional[torch.Generator] = None,
    weight: float = 0.5,
) -> torch.Tensor:
    """Features of nearby Gaussians should agree (spatial smoothness regulariser).

    features: [N, D]; neighbours: [N, k] from `knn_indices`. On up to `num_samples` Gaussians
    drawn without replacement, weight * mean over (i, j in kNN(i)) of (1 - cos(f_i, f_j)) on the
    whole feature, so both levels are smoothed. A Gaussian's feature is only seen through
    blending with its neighbours, so isolated disagreeing ones become speckle in 3D selections.
    """
    num = features.shape[0]
    if num == 0 or neighbours.shape[1] == 0:
        return features.sum() * 0.0
    if num_samples < num:
        gen_device = generator.device if generator is not None else features.device
        rows = torch.randperm(num, generator=generator, device=gen_device)[:num_samples].to(features.device)
    else:
        rows = torch.arange(num, device=features.device)
    unit = F.normalize(features, dim=-1)
    cos = (unit[rows, None, :] * unit[neighbours.to(features.device)[rows]]).sum(dim=-1)
    return weight * (1.0 - cos).mean()


def dino_distillation_loss(rendered: torch.Tensor, target: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    """Distil DINO into the Gaussians: weight * mean (1 - cos) between the rendered DINO feature map
    [H, W, k], averaged over each DINO patch, and the cached patch features [h, w, k].

    DINO features exist per 8x8 patch only, so the render is pooled to the patch grid rather than
    the target upsampled (which would invent detail inside a patch).
    """
    pooled = F.adaptive_avg_pool2d(rendered.permute(2, 0, 1)[None], target.shape[:2])[0].permute(1, 2, 0)
    return weight * (1 - F.cosine_similarity(pooled, target.to(pooled), dim=-1)).mean()
