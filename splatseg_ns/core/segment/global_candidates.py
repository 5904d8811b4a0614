"""Global Feature-guided Learning (GFL): global candidates of each level and the loss they drive.

Click-Gaussian (Choi et al., ECCV 2024, arXiv 2407.11793), Sec. 3.3. SAM masks are made per
view, so they disagree across views; the contrastive loss alone learns those disagreements.
GFL smooths them out with a scene-wide vote:

1. render every training view without gradient and average the rendered feature inside each
   2D mask (`mask_mean_features`): one vector per (view, mask) and level;
2. cluster those averages per level with HDBSCAN (`cluster_candidates`); the normalised cluster
   means are the level's *global candidates*. A mask that agrees with no other view is noise
   and casts no vote;
3. every Gaussian's nearest candidate (cosine, `assign_to_candidates`) is its target; `gfl_loss`
   pulls the Gaussian's own feature toward it and pushes the other candidates below tau_l.

Relies on torch and `hdbscan` (or scikit-learn's HDBSCAN when `hdbscan` is missing), both
imported lazily. The model owns the schedule (`GFLConfig.start_step`, `refresh_every`); this
module only holds the configuration and the operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from splatseg_ns.core.configs import LoadsOlderConfigs
from splatseg_ns.core.features import LEVELS, level_dim, level_features


@dataclass
class GFLConfig(LoadsOlderConfigs):
    """Global Feature-guided Learning, Click-Gaussian Sec. 3.3.

    - From `start_step` steps into the feature stage, every `refresh_every` steps, render all
      training views, average features per mask, and cluster them into global candidates.
    - Each step, pull (a sample of) the Gaussians toward their nearest candidate and push them
      away from the others.

    Args:
        start_step: Steps after the feature stage starts before GFL begins (paper: 2000 of 3000),
            so the contrastive loss has made features meaningful enough to cluster. Default 2000.
        refresh_every: Steps between two rebuilds of the candidates. The paper refreshes
            "regularly" without a number; 250 rebuilds four times in the paper's last 1000
            steps, each costing one no-grad render of every view. Default 250.
        epsilon_coarse: HDBSCAN `cluster_selection_epsilon` of the coarse level (paper: 1e-2).
            Clusters closer than this (Euclidean, on unit vectors) are merged. Default 1e-2.
        epsilon_fine: The same for the fine level (paper: 1e-3); smaller, so nearby parts stay
            apart. Default 1e-3.
        min_cluster_size_per_view: HDBSCAN `min_cluster_size` is this times the number of views
            (paper: proportional to the number of views, factor unstated). An object seen in
            fewer than this fraction of the views forms no candidate of its own. Default 0.1.
        min_cluster_size_floor: Lower bound on `min_cluster_size` for scenes with few views
            (HDBSCAN needs at least 2). Default 2.
        min_samples: HDBSCAN `min_samples`; None uses `min_cluster_size` (HDBSCAN's own
            default). Default None.
        min_mask_area: Masks with fewer pixels in the rendered view are left out: their
            average is a few pixels' worth of noise. Default 0 (keep all).
        pull_threshold: A Gaussian is pulled only if its cosine to its target exceeds this
            (paper: 0.9), so a Gaussian no candidate describes is not forced onto one.
            Default 0.9.
        weight: Weight of the GFL terms (pull and push alike; paper: 10). Default 10.0.
        max_gaussians: Gaussians sampled per step for the loss (the [N, K] similarity matrix
            of a million-Gaussian scene is large); None uses all. Default 100_000.
        merge_above: Candidates whose centres have a cosine above this are merged into one, and
            when HDBSCAN finds no cluster, all masks form one candidate if they agree this well.
            HDBSCAN never keeps a lone cluster whole, so it splits a scene's single object (or
            one part seen everywhere) into near-copies (centre cosine 0.98-1.0 measured), which
            GFL then pulls towards one copy and pushes from the other, and a click picks only
            one. Distinct objects of a run without GFL can be 0.95 apart, so keep it high.
            Default 0.98; None turns it off.
        merge_shared_views: ... but only clusters whose masks rarely come from the same view: a
            view's masks are different things by construction, so two clusters with masks in
            most of the same views are two parts whose features have not separated yet (GFL
            would fuse them for good), not near-copies of one (each view holds one mask of a
            part, which HDBSCAN puts in one copy or the other). Merged when the views holding a
            mask of both are fewer than this fraction of the views of the smaller. Default 0.5.
    """

    start_step: int = 2000
    refresh_every: int = 250
    epsilon_coarse: float = 1e-2
    epsilon_fine: float = 1e-3
    min_cluster_size_per_view: float = 0.1
    min_cluster_size_floor: int = 2
    min_samples: Optional[int] = None
    min_mask_area: int = 0
    pull_threshold: float = 0.9
    weight: float = 10.0
    max_gaussians: Optional[int] = 100_000
    merge_above: Optional[float] = 0.98
    merge_shared_views: float = 0.5


@dataclass
class LevelCandidates:
    """The global candidates of one level and the masks that voted for them.

    Every row of the mask tensors is one (view, mask) pair that was clustered, so per-mask data
    (CLIP embeddings, say) can be aggregated per candidate: the masks of candidate k are
    `mask_labels == k`. All tensors live on the CPU until `to()` moves them.
    """

    centers: torch.Tensor
    """[K, D_l] unit-norm candidate features (K may be 0)."""
    mask_features: torch.Tensor
    """[M, D_l] mean rendered feature of each mask (not normalised)."""
    mask_labels: torch.Tensor
    """[M] candidate index of each mask, -1 for HDBSCAN noise."""
    mask_views: torch.Tensor
    """[M] index of the view the mask comes from (order of the views given)."""
    mask_ids: torch.Tensor
    """[M] the mask's id in its view's instance map."""
    mask_areas: torch.Tensor
    """[M] the mask's area in pixels of the rendered view."""

    @property
    def num_candidates(self) -> int:
        return int(self.centers.shape[0])

    def to(self, device) -> "LevelCandidates":
        return LevelCandidates(**{name: getattr(self, name).to(device) for name in self.__dataclass_fields__})


@dataclass
class GlobalCandidates:
    """Global candidates of both levels: coarse on features[:, :coarse_dim], fine on all channels."""

    coarse: LevelCandidates
    fine: LevelCandidates
    coarse_dim: int
    num_views: int

    def level(self, name: str) -> LevelCandidates:
        if name not in LEVELS:
            raise ValueError(f"Unknown level {name!r}: use 'coarse' or 'fine'.")
        return getattr(self, name)

    def to(self, device) -> "GlobalCandidates":
        return GlobalCandidates(self.coarse.to(device), self.fine.to(device), self.coarse_dim, self.num_views)

    @classmethod
    def from_centers(cls, coarse: torch.Tensor, fine: torch.Tensor, coarse_dim: int) -> "GlobalCandidates":
        """Candidates known only by their centres (as a checkpoint stores them): enough for GFL and clicks;
        the per-mask tables stay empty until the next refresh."""

        def level(centers: torch.Tensor) -> LevelCandidates:
            empty = torch.zeros(0, dtype=torch.long, device=centers.device)
            return LevelCandidates(centers, centers.new_zeros(0, centers.shape[1]), empty, empty, empty, empty)

        return cls(level(coarse), level(fine), coarse_dim, num_views=0)


@torch.no_grad()
def mask_mean_features(
    feature_map: torch.Tensor, ids: torch.Tensor, min_area: int = 0
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Average feature inside each mask of one view.

    feature_map: [H, W, D]; ids: [H, W] instance ids, 0 = no mask (ignored).
    Returns (means [M, D], mask_ids [M] long, areas [M] long) for the M masks present with at
    least `min_area` pixels, in increasing id order.
    """
    dim = feature_map.shape[-1]
    flat_ids = ids.reshape(-1).to(feature_map.device).long()
    flat_features = feature_map.reshape(-1, dim)
    valid = flat_ids > 0
    mask_ids, inverse = torch.unique(flat_ids[valid], return_inverse=True)
    sums = torch.zeros(mask_ids.numel(), dim, dtype=flat_features.dtype, device=flat_features.device)
    sums.index_add_(0, inverse, flat_features[valid])
    areas = torch.bincount(inverse, minlength=mask_ids.numel())
    keep = areas >= max(min_area, 1)
    return sums[keep] / areas[keep, None].to(sums.dtype), mask_ids[keep], areas[keep]


def min_cluster_size_for(num_views: int, per_view: float = 0.1, floor: int = 2) -> int:
    """HDBSCAN's minimum cluster size for a scene of `num_views` views.

    An object contributes about one mask per view that sees it, so a cluster size proportional
    to the number of views (Click-Gaussian Sec. 3.3) asks a candidate to be seen in a fixed
    fraction of the views, whatever the capture's length.
    """
    return max(floor, 2, int(math.ceil(per_view * num_views)))


def _hdbscan_labels(
    points: np.ndarray,
    min_cluster_size: int,
    epsilon: float,
    min_samples: Optional[int],
    allow_single_cluster: bool,
) -> np.ndarray:
    try:
        import hdbscan

        clusterer = hdbscan.HDBSCAN(
            min_cluster_size=min_cluster_size,
            min_samples=min_samples,
            cluster_selection_epsilon=epsilon,
            allow_single_cluster=allow_single_cluster,
            core_dist_n_jobs=1,  # a few thousand points: threads cost more than they save
        )
    except ImportError:
        from sklearn.cluster import HDBSCAN

        clusterer = HDBSCAN(
            min_cluster_size=min_cluster_size,
            min_samples=min_samples,
            cluster_selection_epsilon=epsilon,
            allow_single_cluster=allow_single_cluster,
            copy=True,
        )
    return np.asarray(clusterer.fit(points).labels_)


@torch.no_grad()
def cluster_candidates(
    mask_features: torch.Tensor,
    min_cluster_size: int,
    epsilon: float,
    min_samples: Optional[int] = None,
    allow_single_cluster: bool = False,
    merge_above: Optional[float] = None,
    mask_views: Optional[torch.Tensor] = None,
    merge_shared_views: float = 0.5,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Cluster per-mask mean features into global candidates (Click-Gaussian Sec. 3.3).

    HDBSCAN runs on the L2-normalised features, where Euclidean distance is a monotone function
    of cosine (|a - b|^2 = 2 - 2 cos), the similarity every loss uses; the paper's
    cluster_selection_epsilon is applied in that space. Each candidate is the normalised mean
    of its members' unit features.
    With `merge_above`, clusters whose centres are closer than that cosine are merged (with
    `mask_views`, the view of each mask, only those that share few views: `GFLConfig`), and when
    HDBSCAN finds none, all masks form one cluster if they all lie that close to their mean.
    Returns (centers [K, D] unit-norm, labels [M] long, -1 = noise), on the input's device.
    K is 0 when there are fewer masks than `min_cluster_size` or HDBSCAN finds only noise.
    """
    num_masks, dim = mask_features.shape
    device = mask_features.device
    labels = torch.full((num_masks,), -1, dtype=torch.long, device=device)
    empty = mask_features.new_zeros(0, dim)
    min_cluster_size = max(int(min_cluster_size), 2)
    if num_masks < min_cluster_size:
        return empty, labels
    unit = F.normalize(mask_features.float(), dim=-1)
    if min_samples is not None:
        min_samples = max(1, min(int(min_samples), num_masks - 1))
    found = _hdbscan_labels(
        unit.cpu().double().numpy(), min_cluster_size, float(epsilon), min_samples, allow_single_cluster
    )
    labels = torch.from_numpy(found.astype(np.int64)).to(device).clamp(min=-1)
    if merge_above is not None:
        if int(labels.max()) < 0 and (unit @ F.normalize(unit.mean(0), dim=0)).min() > merge_above:
            labels = torch.zeros_like(labels)  # one tight group: the scene's only object
        labels = merge_close_clusters(unit, labels, merge_above, mask_views, merge_shared_views)
    num_clusters = int(labels.max()) + 1
    if num_clusters <= 0:
        return empty, labels
    return _cluster_centers(unit, labels, num_clusters).to(mask_features.dtype), labels


def _cluster_centers(unit: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """The normalised mean of each cluster's unit features."""
    member = labels >= 0
    sums = torch.zeros(num_clusters, unit.shape[1], dtype=unit.dtype, device=unit.device)
    sums.index_add_(0, labels[member], unit[member])
    return F.normalize(sums, dim=-1)


def merge_close_clusters(unit: torch.Tensor, labels: torch.Tensor, above: float,
                         mask_views: Optional[torch.Tensor] = None, shared_views: float = 0.5) -> torch.Tensor:
    """Relabel so that clusters whose centres have a cosine above `above` (directly or through a chain
    of such pairs) become one; labels stay 0..K'-1, noise stays -1. With `mask_views` [M] (each mask's
    view), a close pair merges only when the views holding a mask of both are fewer than
    `shared_views` times the views of the smaller cluster (`GFLConfig.merge_shared_views`)."""
    num_clusters = int(labels.max()) + 1
    if num_clusters < 2:
        return labels
    from scipy.sparse.csgraph import connected_components

    centers = _cluster_centers(unit, labels, num_clusters)
    close = (centers @ centers.T) > above
    if mask_views is not None:
        member = labels >= 0
        seen = torch.zeros(num_clusters, int(mask_views.max()) + 1, device=labels.device)
        seen[labels[member], mask_views[member].to(labels.device).long()] = 1.0
        shared = seen @ seen.T  # views with a mask of both
        views = seen.sum(dim=1)
        close &= shared < shared_views * torch.minimum(views[:, None], views[None, :])
        close |= torch.eye(num_clusters, dtype=torch.bool, device=close.device)
    close = close.cpu().numpy()
    _, group = connected_components(close, directed=False)
    group = torch.from_numpy(group).to(labels.device)  # numbered by each group's lowest cluster: already compact
    return torch.where(labels >= 0, group[labels.clamp(min=0)], labels)


def _empty_level(dim: int) -> Dict[str, List[torch.Tensor]]:
    empty = torch.zeros(0, dtype=torch.long)
    return {"features": [torch.zeros(0, dim)], "views": [empty], "ids": [empty], "areas": [empty]}


@torch.no_grad()
def build_global_candidates(
    views: Iterable[Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]],
    coarse_dim: int,
    config: Optional[GFLConfig] = None,
    num_views: Optional[int] = None,
) -> GlobalCandidates:
    """Global candidates of both levels from the rendered feature maps of all training views.

    views: iterable of (feature_map [H, W, D], coarse_ids [H, W] or None, fine_ids [H, W] or
    None), one per view; a generator keeps only one rendered view in memory at a time.
    The coarse level averages features[..., :coarse_dim] over coarse masks, the fine level all
    D channels over fine masks (the granularity prior). `num_views` sets the minimum cluster
    size; by default it is the number of views consumed.
    """
    config = config or GFLConfig()
    collected: Dict[str, Dict[str, List[torch.Tensor]]] = {}
    count, full_dim = 0, coarse_dim
    for view_index, (feature_map, coarse_ids, fine_ids) in enumerate(views):
        count += 1
        full_dim = feature_map.shape[-1]
        for level, ids in zip(LEVELS, (coarse_ids, fine_ids)):
            store = collected.setdefault(level, _empty_level(level_dim(level, full_dim, coarse_dim)))
            if ids is None:
                continue
            level_map = level_features(feature_map, level, coarse_dim)
            means, mask_ids, areas = mask_mean_features(level_map, ids, config.min_mask_area)
            store["features"].append(means.float().cpu())
            store["views"].append(torch.full_like(mask_ids, view_index).cpu())
            store["ids"].append(mask_ids.cpu())
            store["areas"].append(areas.cpu())
    num_views = count if num_views is None else num_views
    min_size = min_cluster_size_for(num_views, config.min_cluster_size_per_view, config.min_cluster_size_floor)
    epsilons = {"coarse": config.epsilon_coarse, "fine": config.epsilon_fine}
    levels = {}
    for level in LEVELS:
        store = collected.get(level, _empty_level(level_dim(level, full_dim, coarse_dim)))
        features, views_of, ids_of, areas_of = (
            torch.cat(store[key]) for key in ("features", "views", "ids", "areas")
        )
        centers, labels = cluster_candidates(features, min_size, epsilons[level], config.min_samples,
                                             merge_above=config.merge_above, mask_views=views_of,
                                             merge_shared_views=config.merge_shared_views)
        levels[level] = LevelCandidates(centers, features, labels, views_of, ids_of, areas_of)
    return GlobalCandidates(levels["coarse"], levels["fine"], coarse_dim, num_views)


@torch.no_grad()
def assign_to_candidates(
    gaussian_features: torch.Tensor, centers: torch.Tensor, chunk_size: int = 65536
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each Gaussian's nearest global candidate by cosine similarity.

    gaussian_features: [N, D]; centers: [K, D]. Works in chunks of `chunk_size` rows so that a
    million Gaussians never build the whole [N, K] matrix at once.
    Returns (index [N] long, cos [N]); with no candidates (K = 0) every index is -1 and every
    cos -1, so any similarity threshold rejects them.
    """
    num = gaussian_features.shape[0]
    device = gaussian_features.device
    if centers.shape[0] == 0:
        return (
            torch.full((num,), -1, dtype=torch.long, device=device),
            torch.full((num,), -1.0, dtype=gaussian_features.dtype, device=device),
        )
    unit_centers = F.normalize(centers.to(device=device, dtype=gaussian_features.dtype), dim=-1)
    index = torch.empty(num, dtype=torch.long, device=device)
    cos = torch.empty(num, dtype=gaussian_features.dtype, device=device)
    for start in range(0, num, chunk_size):
        block = F.normalize(gaussian_features[start : start + chunk_size], dim=-1) @ unit_centers.T
        cos[start : start + chunk_size], index[start : start + chunk_size] = block.max(dim=-1)
    return index, cos


def _sample_rows(
    num: int, sample: Optional[int], generator: Optional[torch.Generator], device
) -> Optional[torch.Tensor]:
    """`sample` row indices drawn without replacement, or None for all rows."""
    if sample is None or sample >= num:
        return None
    gen_device = generator.device if generator is not None else device
    return torch.randperm(num, generator=generator, device=gen_device)[:sample].to(device)


def gfl_loss(
    gaussian_features: torch.Tensor,
    centers: torch.Tensor,
    margin: float,
    pull_threshold: float = 0.9,
    weight: float = 10.0,
    sample: Optional[int] = None,
    push_features: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, torch.Tensor]:
    """GFL at one level on per-Gaussian features (Click-Gaussian Sec. 3.3).

    Each Gaussian's target is its nearest candidate (chosen without gradient).
    - pull = weight * mean over Gaussians with cos(f, target) > pull_threshold of
      (1 - cos(f, target)). The gradient is that of the paper's -cos; the 1 makes the term 0
      when converged and keeps it in [0, 1 - threshold), so logs read as a distance.
    - push = weight * mean over (Gaussian, non-target candidate) pairs of 1[cos > margin] cos,
      the contrastive push against global candidates instead of other pixels.
    `push_features` (default `gaussian_features`) is used for the push term so the caller can
    stop gradients through part of it (the fine level detaches the coarse part, as the
    contrastive fine push does). `sample` draws that many Gaussians per call.
    With no candidates both terms are zeros that keep the graph.
    """
    zero = gaussian_features.sum() * 0.0
    if centers.shape[0] == 0 or gaussian_features.shape[0] == 0:
        return {"pull": zero, "push": zero}
    rows = _sample_rows(gaussian_features.shape[0], sample, generator, gaussian_features.device)
    features = gaussian_features if rows is None else gaussian_features[rows]
    pushed = push_features if push_features is not None else gaussian_features
    pushed = pushed if rows is None else pushed[rows]
    unit_centers = F.normalize(centers.to(device=features.device, dtype=features.dtype), dim=-1)
    cos = F.normalize(features, dim=-1) @ unit_centers.T  # [N, K]
    target = cos.detach().argmax(dim=-1)
    target_cos = cos.gather(1, target[:, None]).squeeze(1)
    pulled = target_cos.detach() > pull_threshold
    pull = weight * (1.0 - target_cos[pulled]).mean() if pulled.any() else zero
    if unit_centers.shape[0] < 2:
        return {"pull": pull, "push": zero}
    push_cos = F.normalize(pushed, dim=-1) @ unit_centers.T
    others = torch.ones_like(push_cos, dtype=torch.bool).scatter_(1, target[:, None], False)
    push_cos = push_cos[others]
    push = weight * (push_cos * (push_cos.detach() > margin)).mean()
    return {"pull": pull, "push": push}


def two_level_gfl_loss(
    gaussian_features: torch.Tensor,
    candidates: GlobalCandidates,
    config: Optional[GFLConfig] = None,
    margin_coarse: float = 0.5,
    margin_fine: float = 0.75,
    generator: Optional[torch.Generator] = None,
) -> Dict[str, torch.Tensor]:
    """GFL at both levels on one shared sample of Gaussians; returns the four terms by name.

    Coarse on features[:, :coarse_dim], fine on all channels with the coarse part detached in
    the fine push (the contrastive loss's convention: fine negatives may share an object, so
    they must not tear its coarse feature apart). The push margins are the contrastive loss's
    tau_l (the model passes its own), so one flag sets each level's margin in both losses. Sum
    the terms for the loss.
    """
    config = config or GFLConfig()
    coarse_dim = candidates.coarse_dim
    rows = _sample_rows(gaussian_features.shape[0], config.max_gaussians, generator, gaussian_features.device)
    features = gaussian_features if rows is None else gaussian_features[rows]
    common = dict(pull_threshold=config.pull_threshold, weight=config.weight)
    coarse = gfl_loss(level_features(features, "coarse", coarse_dim), candidates.coarse.centers, margin_coarse, **common)
    fine_push = torch.cat([features[:, :coarse_dim].detach(), features[:, coarse_dim:]], dim=-1)
    fine = gfl_loss(features, candidates.fine.centers, margin_fine, push_features=fine_push, **common)
    return {
        "gfl_coarse_pull": coarse["pull"],
        "gfl_coarse_push": coarse["push"],
        "gfl_fine_pull": fine["pull"],
        "gfl_fine_push": fine["push"],
    }


@torch.no_grad()
def candidate_embeddings(
    level: LevelCandidates,
    per_view: Sequence[Tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """[K, E] unit embeddings per candidate: the mean of the embeddings (e.g. CLIP) of the 2D masks
    clustered into it; a zero row for a candidate none of whose masks has one.

    per_view[v] = (mask ids [M_v], embeddings [M_v, E]) of view v, the ids those of `level.mask_ids`.
    This is how a text query reaches segments: masks carry CLIP embeddings, candidates gather them.
    """
    num = level.num_candidates
    dim = next((emb.shape[-1] for _, emb in per_view if emb.ndim == 2), 0)
    sums = torch.zeros(num, dim)
    if num == 0 or dim == 0:
        return sums
    for view, (ids, emb) in enumerate(per_view):
        members = (level.mask_views == view) & (level.mask_labels >= 0)
        if not members.any() or ids.numel() == 0:
            continue
        lookup = {int(i): row for row, i in enumerate(ids.tolist())}
        for mask_id, label in zip(level.mask_ids[members].tolist(), level.mask_labels[members].tolist()):
            row = lookup.get(int(mask_id))
            if row is not None:
                sums[label] += emb[row].float()
    norms = sums.norm(dim=-1, keepdim=True)
    return torch.where(norms > 0, sums / norms.clamp_min(1e-12), sums)
