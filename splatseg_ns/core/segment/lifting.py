"""Mask lifting: every Gaussian votes, with its rendered weight, for the 2D masks it is seen in.

FlashSplat (Shen et al., ECCV 2024, arXiv 2409.08270): a Gaussian's contribution to a pixel is
its blending weight alpha_i T_i there (its opacity at the pixel times the transmittance in front
of it). Summed over all training views, the weight a Gaussian puts on the pixels of each label
(a global candidate's masks, or pixels no mask covers) decides its label optimally: the 2D masks
are best reproduced by giving each Gaussian the label it carries most weight for (the solution
of FlashSplat's linear program is that argmax).

- `rendered_weights` computes those sums for one view in one pass, the geometry fixed: the render
  is linear in the per-Gaussian values, so the gradient of sum(target * render) with respect to
  value channel l of Gaussian i is exactly the weight i puts on the pixels where target channel l
  is 1 (`one_hot_labels`). Any differentiable rasteriser does it (gsplat's CUDA kernels,
  `rasterize` on a CPU); both levels of a view go through one backward.
- `mask_labels` turns one view's instance map into per-pixel labels: each 2D mask maps to the
  global candidate its mean rendered feature is closest to, when it is close enough (as GFL maps
  masks to candidates); a mask no candidate describes casts no vote; unmasked pixels vote "nothing".
- `cast_votes` does it over every view, both levels at once, and
- `tally_votes` gives each Gaussian its label: the candidate it carries most weight for, or none
  (-1) when more of its weight falls on unmasked pixels, or it is never seen. That is what keeps
  background Gaussians and floaters out of every selection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn.functional as F

from splatseg_ns.core.configs import LoadsOlderConfigs
from splatseg_ns.core.features import LEVELS, level_features
from splatseg_ns.core.segment.losses import knn_indices
from splatseg_ns.core.segment.neighbourhood import smooth_votes

IGNORE = -1
"""Label of pixels that cast no vote (masks no candidate describes)."""


@dataclass
class VoteConfig(LoadsOlderConfigs):
    """Mask lifting (FlashSplat, arXiv 2409.08270): every Gaussian's label from its rendered weight in
    each global candidate's 2D masks, computed once the features are trained (and by the tools for a
    run that has none). A Gaussian mostly seen on unmasked pixels, or never seen, belongs to no
    candidate; where the vote and the feature disagree, the vote decides."""

    enabled: bool = True
    """Label the Gaussians by their votes for selections, segments and exports; off: by their nearest
    candidate in feature space (Click-Gaussian's assignment)."""
    min_mask_cos: float = 0.8
    """A 2D mask votes for the candidate its mean rendered feature is closest to when their cosine is at
    least this; a mask no candidate describes that well casts no vote."""
    unmasked_bias: float = 0.7
    """A Gaussian belongs to no candidate when this times its weight on unmasked pixels is at least its
    weight on its best candidate's masks (below 1: the benefit of the doubt goes to objects, whose thin
    parts automatic masks often miss; on the tabletop scene 0.7 against 1.0 kept exact masks' scores
    and lifted noisy masks' fine mIoU from 0.88 to 0.90)."""
    border_px: int = 2
    """Unmasked pixels within this many pixels of a mask cast no vote: automatic masks leave out borders
    and thin parts, and such a gap is no evidence that a Gaussian there belongs to nothing (0: every
    unmasked pixel votes; on the tabletop scene 2 kept exact masks' scores and lifted noisy masks' fine
    mIoU from 0.52 to 0.89)."""
    other_level_covers: bool = True
    """Pixels one level leaves unmasked but the other masks cast no vote at the first ("nothing here" is false
    there: automatic masks miss thin parts at the fine level and shrink objects to one part at the coarse)."""
    cut_masks: bool = False
    """Cut a mask whose pixels render as several candidates into those pieces, each voting on its own
    (`mask_labels`' cut_by): the fine level's by objects and parts, the coarse level's by objects."""
    min_piece: float = 0.2
    """Share of a mask that a piece rendering as another candidate must hold to be cut off."""
    smooth_rounds: int = 0
    """Rounds of mixing each Gaussian's vote shares with its nearest neighbours' before the tally
    (`neighbourhood.smooth_votes`): a thin part that some views miss keeps its Gaussians; 0: none."""
    smooth_strength: float = 0.5
    """Per round, the weight of the neighbours' mean share against the Gaussian's own."""
    smooth_neighbours: int = 8
    """Nearest Gaussians (by centre) each Gaussian's votes are mixed with."""
    min_weight: float = 1e-3
    """Total rendered weight over all training views below which a Gaussian counts as never seen."""
    weak_share: float = 0.7
    """An exported object drops the members whose label holds less than this share of their rendered
    weight (ambiguous Gaussians on the border of several segments), unless --keep-weak."""


@dataclass(frozen=True)
class Votes:
    """Each Gaussian's label at one level and how clearly it won.

    labels [N] long: the candidate, -1 for none; share [N] float32: the fraction of the Gaussian's
    total rendered weight (over all labels, "unmasked" included) that its label holds, 0 when it
    has no label.
    """

    labels: torch.Tensor
    share: torch.Tensor


def one_hot_labels(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """[H, W, num_labels] float: 1 at each pixel's label, nothing for IGNORE."""
    if num_labels == 0:
        return torch.zeros(*labels.shape, 0, device=labels.device)
    counted = labels >= 0
    return F.one_hot(labels.clamp(min=0).long(), num_labels).float() * counted[..., None]


def rendered_weights(render: Callable[[torch.Tensor], torch.Tensor], num_gaussians: int, target: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[N, C]: per Gaussian, the sum over pixels of target[p, c] times its weight alpha_i T_i at p.

    render: per-Gaussian values [N, C] -> image [H, W, C], alpha-blended with fixed geometry and
    differentiable in the values; target [H, W, C], e.g. `one_hot_labels` (then column c is the
    weight each Gaussian puts on the pixels of label c). dtype: the geometry's.
    """
    values = torch.zeros(num_gaussians, target.shape[-1], device=target.device, dtype=dtype, requires_grad=True)
    with torch.enable_grad():
        image = render(values)
        (weights,) = torch.autograd.grad(image, values, grad_outputs=target.to(image.dtype).reshape(image.shape))
    return weights.detach()


@torch.no_grad()
def nearest_candidates(feature_map: torch.Tensor, centers: torch.Tensor, min_cos: float) -> torch.Tensor:
    """[...] long: each feature's ([..., D]: a pixel's, a mask's mean) nearest candidate by cosine, -1 below
    `min_cos`."""
    if centers.shape[0] == 0:
        return torch.full(feature_map.shape[:-1], IGNORE, dtype=torch.long, device=feature_map.device)
    cos = F.normalize(feature_map.float(), dim=-1) @ F.normalize(centers.float().to(feature_map.device), dim=-1).T
    best_cos, best = cos.max(dim=-1)
    return torch.where(best_cos >= min_cos, best, torch.full_like(best, IGNORE))


def mask_labels(ids: torch.Tensor, feature_map: torch.Tensor, centers: torch.Tensor, min_cos: float,
                border_px: int = 0, covered: Optional[torch.Tensor] = None, cut_by: Optional[torch.Tensor] = None,
                min_piece: float = 0.2) -> torch.Tensor:
    """[H, W] long labels of one view at one level: candidate k, K for unmasked pixels, IGNORE for the
    pixels of masks that map to no candidate, for unmasked pixels within `border_px` of a mask
    (automatic masks leave their borders and thin parts out: a gap there is no evidence of background)
    and for unmasked pixels that `covered` [H, W] bool marks (the other level masks them: a part with
    no mask of its own, or an object whose mask is only one of its parts, is not background either).

    ids [H, W]: the view's instance map (0 = no mask); feature_map [H, W, D_level]: the rendered
    features of the level; centers [K, D_level]: the level's global candidates. Each mask takes the
    candidate its mean feature is closest to when the cosine is at least `min_cos`, by its features
    alone, so votes cast at the end of training and after loading the run are the same.

    cut_by [H, W] long (-1: no opinion): what each pixel renders as (`nearest_candidates`). A mask whose
    pixels render as several things, each holding at least `min_piece` of it, is cut into those pieces,
    each mapped on its own (a mug merged with its table, a whole object given as a part, a mask bled
    over its neighbour); smaller disagreeing pieces stay with their mask (feature noise at its border).
    """
    num_candidates = centers.shape[0]
    flat_ids = ids.reshape(-1).long()
    labels = torch.full_like(flat_ids, num_candidates)
    masked = flat_ids > 0
    if not bool(masked.any()):
        return labels.reshape(ids.shape)
    if border_px > 0:
        near = F.max_pool2d(masked.reshape(1, 1, *ids.shape).float(), 2 * border_px + 1, 1, border_px)
        labels[near.reshape(-1).bool() & ~masked] = IGNORE
    if covered is not None:
        labels[covered.reshape(-1) & ~masked] = IGNORE
    mask_ids, inverse = torch.unique(flat_ids[masked], return_inverse=True)
    if cut_by is not None:
        inverse = _pieces(inverse, cut_by.reshape(-1)[masked].long(), min_piece)
    flat_features = feature_map.reshape(-1, feature_map.shape[-1]).float()
    sums = torch.zeros(int(inverse.max()) + 1, flat_features.shape[1], device=flat_features.device)
    sums.index_add_(0, inverse, flat_features[masked])
    labels[masked] = nearest_candidates(sums, centers, min_cos)[inverse]
    return labels.reshape(ids.shape)


def _pieces(mask_index: torch.Tensor, owner: torch.Tensor, min_piece: float) -> torch.Tensor:
    """Per masked pixel, the group it is mapped with: its mask (index < M), or the piece of its mask that
    renders as its owner, when that piece holds at least `min_piece` of the mask and the mask has another
    such piece or majority (index >= M)."""
    num_masks = int(mask_index.max()) + 1
    stride = int(owner.max().clamp_min(0)) + 2
    key = mask_index * stride + owner + 1  # owner -1 -> 0
    piece, piece_index, piece_size = torch.unique(key, return_inverse=True, return_counts=True)
    of_mask, piece_owner = piece // stride, piece % stride - 1
    mask_size = torch.bincount(mask_index, minlength=num_masks)
    big = (piece_size >= min_piece * mask_size[of_mask]) & (piece_owner >= 0)
    big_per_mask = torch.bincount(of_mask[big], minlength=num_masks)
    cut = big & (big_per_mask[of_mask] >= 2)  # a mask of one big piece stays whole
    return torch.where(cut[piece_index], num_masks + piece_index, mask_index)


def compact(labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(present labels [L], per-pixel index into them, IGNORE kept): a view's labels renumbered 0..L-1,
    so one view renders as few channels as it has labels."""
    counted = labels >= 0
    present, inverse = torch.unique(labels[counted], return_inverse=True)
    local = torch.full_like(labels, IGNORE)
    local[counted] = inverse
    return present, local


@torch.no_grad()
def tally_votes(weights: torch.Tensor, min_weight: float = 1e-3, unmasked_bias: float = 1.0) -> Votes:
    """Labels from summed weights [N, K + 1] (column K: unmasked pixels).

    A Gaussian takes the candidate it carries most weight for, unless `unmasked_bias` times its
    weight on unmasked pixels is at least as large (then, like a Gaussian whose total weight is
    below `min_weight`, i.e. never really seen, it belongs to no candidate). A bias below 1 gives
    objects the benefit of the doubt (FlashSplat's background bias).
    """
    num_candidates = weights.shape[1] - 1
    total = weights.sum(dim=1)
    if num_candidates == 0:
        return Votes(torch.full_like(total, IGNORE, dtype=torch.long), torch.zeros_like(total))
    best_weight, best = weights[:, :num_candidates].max(dim=1)
    wins = (best_weight > unmasked_bias * weights[:, num_candidates]) & (total >= min_weight) & (best_weight > 0)
    labels = torch.where(wins, best, torch.full_like(best, IGNORE))
    share = torch.where(wins, best_weight / total.clamp_min(1e-12), torch.zeros_like(total))
    return Votes(labels, share.float())


Render = Callable[[torch.Tensor], torch.Tensor]
"""Per-Gaussian values [N, C] -> one view's image [H, W, C], the view's geometry fixed."""


@torch.no_grad()
def cast_votes(views: Iterable[Tuple[Render, torch.Tensor, Dict[str, torch.Tensor]]], means: torch.Tensor,
               centers: Dict[str, torch.Tensor], coarse_dim: int, config: VoteConfig) -> Dict[str, Votes]:
    """Every Gaussian's label at each level from its rendered weight in every view's masks.

    views: per training view (render, rendered features [H, W, D], {level: instance map [h, w]});
    means [N, 3]: the Gaussians' centres (their neighbourhoods); centers: {level: [K_l, D_l]} the
    global candidates. Each view's masks map to candidates (`mask_labels`) and both levels' weights
    come from one pass (`rendered_weights`); the totals are smoothed over neighbours (`smooth_votes`)."""
    num_gaussians = means.shape[0]
    totals = {level: torch.zeros(num_gaussians, centers[level].shape[0] + 1, device=centers[level].device)
              for level in LEVELS}  # column K: unmasked pixels
    for render, features, masks in views:
        present, targets, ids_of = {}, [], {}
        for level in LEVELS:
            ids_of[level] = masks[level].to(features.device)
            if ids_of[level].shape != features.shape[:2]:
                ids_of[level] = resize_nearest(ids_of[level], *features.shape[:2])
        masked_anywhere = torch.stack([ids > 0 for ids in ids_of.values()]).any(dim=0)
        owners = {level: nearest_candidates(level_features(features, level, coarse_dim), centers[level],
                                            config.min_mask_cos) for level in LEVELS} if config.cut_masks else {}
        for level, ids in ids_of.items():
            cut_by = None
            if config.cut_masks:  # a fine mask is cut by the objects and by the parts its pixels render as
                coarse, own = owners[LEVELS[0]], owners[level]
                cut_by = torch.where((coarse >= 0) & (own >= 0), coarse * (centers[level].shape[0] + 1) + own,
                                     torch.full_like(own, IGNORE)) if level != LEVELS[0] else coarse
            labels = mask_labels(ids, level_features(features, level, coarse_dim), centers[level],
                                 config.min_mask_cos, config.border_px,
                                 masked_anywhere if config.other_level_covers else None, cut_by, config.min_piece)
            present[level], local = compact(labels)
            targets.append(one_hot_labels(local, present[level].numel()))
        weights = rendered_weights(render, num_gaussians, torch.cat(targets, dim=-1))
        start = 0
        for level in LEVELS:
            count = present[level].numel()
            totals[level][:, present[level]] += weights[:, start : start + count]
            start += count
    if config.smooth_rounds > 0:
        neighbours = knn_indices(means, config.smooth_neighbours).to(totals[LEVELS[0]].device)
        totals = {level: smooth_votes(total, neighbours, config.smooth_rounds, config.smooth_strength)
                  for level, total in totals.items()}
    return {level: tally_votes(totals[level], config.min_weight, config.unmasked_bias) for level in LEVELS}


def resize_nearest(ids: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """An instance map [h, w] at another size, nearest neighbour (ids must not blend)."""
    return F.interpolate(ids[None, None].float(), size=(height, width), mode="nearest")[0, 0].to(ids.dtype)
