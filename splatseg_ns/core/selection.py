"""Which Gaussians a click, a phrase or "segment everything" picks.

Click-Gaussian (arXiv 2407.11793, Sec. 3.4): the rendered feature at a clicked pixel picks the
nearest global candidate of the chosen level, and the object is the set of Gaussians assigned to
that candidate. The per-Gaussian assignment (argmax cosine to the candidates) does not depend on
the click, so it is computed once per level (`precompute_assignment`; `precompute_click_index`
also keeps the unit candidates and the gather slots a click needs); a click is then one small
matmul and one table lookup over the assignment (`ClickIndex.select`), about as fast as a single
`assignment == k` pass and with no host synchronisation on CUDA.

Relies on the data model of `global_candidates`: features F [N, 24], coarse level F[:, :12],
fine level all 24 channels (the granularity prior); candidates are unit vectors [K, D_level].
`select_by_similarity` is the fallback without candidates (raw cosine to the clicks), and
`segment_everything_by_clustering` clusters Gaussians by position and a distilled (e.g. DINO)
feature, position weighted high, as the "segment everything" of the source projects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from splatseg_ns.core.global_candidates import assign_to_candidates
from splatseg_ns.core.losses import check_finite_features

Level = Literal["coarse", "fine"]
COARSE_DIM = 12
CHUNK = 1 << 18


def level_slice(level: Level, coarse_dim: int = COARSE_DIM) -> slice:
    """Channels of the per-Gaussian feature that make up `level` (fine = coarse + the rest)."""
    if level == "coarse":
        return slice(0, coarse_dim)
    if level == "fine":
        return slice(None)
    raise ValueError(f"level must be 'coarse' or 'fine', got {level!r}")


def level_features(features: torch.Tensor, level: Level, coarse_dim: int = COARSE_DIM) -> torch.Tensor:
    """The [N, D_level] view of `features` [N, D] for `level` (no copy)."""
    return features[..., level_slice(level, coarse_dim)]


@torch.no_grad()
def precompute_assignment(
    features: torch.Tensor, centers: torch.Tensor, chunk_size: int = CHUNK
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Each Gaussian's global candidate (argmax cosine) and its cosine to it, once per level.

    features: [N, D_level]; centers: [K, D_level]. Returns (assignment [N] long,
    similarity [N] float32), computed in chunks by `global_candidates.assign_to_candidates` (the
    GFL targets are the same assignment). With K == 0 every assignment is -1 (selects nothing)
    and every similarity -1. `precompute_click_index` wraps the result for fast clicks.
    Raises `losses.NonFiniteFeaturesError` on NaN/inf features: their argmax would be arbitrary.
    """
    check_finite_features(features)
    return assign_to_candidates(features.float(), centers, chunk_size=chunk_size)


@dataclass(frozen=True)
class ClickIndex:
    """Everything a click needs that does not depend on the click, built once per level.

    assignment [N] long (-1: no candidate) and similarity [N] as `precompute_assignment` returns
    them; unit_centers [K, D_level] float32, the L2-normalised candidates; slots [N] long, the
    assignment with every id outside [0, K) (-1) mapped to K, so a K+1 lookup table whose last
    entry stays False can be gathered by `index_select` on any device without a bounds failure
    (None: the table is gathered by the assignment itself, as `select_candidates` does).
    Build it with `precompute_click_index` (from features) or `ClickIndex.from_assignment`.
    """

    assignment: torch.Tensor
    similarity: Optional[torch.Tensor]
    unit_centers: torch.Tensor
    slots: Optional[torch.Tensor]

    @classmethod
    @torch.no_grad()
    def from_assignment(
        cls, assignment: torch.Tensor, similarity: Optional[torch.Tensor], centers: torch.Tensor
    ) -> "ClickIndex":
        """The index of an assignment already computed against `centers` [K, D_level] (one pass over N)."""
        num_candidates = centers.shape[0]
        assignment = assignment.reshape(-1).long()
        unit_centers = _unit(centers.to(assignment.device))
        valid = (assignment >= 0) & (assignment < num_candidates)
        slots = torch.where(valid, assignment, torch.full_like(assignment, num_candidates))
        return cls(assignment, similarity, unit_centers, slots)

    @property
    def num_candidates(self) -> int:
        return self.unit_centers.shape[0]

    @torch.no_grad()
    def select(
        self,
        positive_features: torch.Tensor,
        negative_features: Optional[torch.Tensor] = None,
        threshold: Optional[float] = None,
        features: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """bool [N]: the Gaussians of the candidates the positive clicks pick, minus the negatives'.

        Same rule as `select_by_clicks` (see there), in a fixed number of small ops plus one
        gather over N and no host synchronisation: the clicks, positive and negative stacked, go
        through one [P+Q, D] x [D, K] product whose row argmax is each click's candidate (the
        centres are unit, so the clicks need no normalising); a K+1 table is set True at the
        positive candidates then False at the negative ones (negative wins) and gathered by the
        slots. Only with `features` and negative clicks are conflicted candidates looked for
        (one synchronisation) and split by their own clicks.
        """
        device = self.assignment.device
        num_candidates, dim = self.unit_centers.shape
        positive = _rows(positive_features, dim, device)
        negative = _rows(negative_features, dim, device)
        num_positive, num_negative = positive.shape[0], negative.shape[0]
        if threshold is not None and self.similarity is None:
            raise ValueError("a similarity threshold needs the per-Gaussian similarity")
        if num_candidates == 0 or num_positive == 0:
            return torch.zeros(self.assignment.shape, dtype=torch.bool, device=device)
        clicks = torch.cat([positive, negative]) if num_negative > 0 else positive
        click_ids = (clicks.float() @ self.unit_centers.T).argmax(dim=-1)
        positive_ids, negative_ids = click_ids[:num_positive], click_ids[num_positive:]
        table = torch.zeros(num_candidates + 1, dtype=torch.bool, device=device)
        table.index_fill_(0, positive_ids, True)
        if num_negative > 0:
            table.index_fill_(0, negative_ids, False)
        selected = _gather(table, self.assignment) if self.slots is None else table.index_select(0, self.slots)
        if threshold is not None:
            selected &= self.similarity >= threshold
        if features is not None and num_negative > 0:
            self._split_conflicts(selected, positive, negative, positive_ids, negative_ids, threshold, features)
        return selected

    def _split_conflicts(
        self,
        selected: torch.Tensor,
        positive: torch.Tensor,
        negative: torch.Tensor,
        positive_ids: torch.Tensor,
        negative_ids: torch.Tensor,
        threshold: Optional[float],
        features: torch.Tensor,
    ) -> None:
        """Add to `selected` the Gaussians of each conflicted candidate that are strictly closer to a
        positive click on that candidate than to every negative click on it (ties: negative)."""
        hit = torch.zeros(2, self.num_candidates, dtype=torch.bool, device=selected.device)
        hit[0].index_fill_(0, positive_ids, True)
        hit[1].index_fill_(0, negative_ids, True)
        conflicted = (hit[0] & hit[1]).nonzero().squeeze(-1).tolist()  # the one host sync
        for candidate in conflicted:
            members = self.assignment == candidate
            if threshold is not None:
                members &= self.similarity >= threshold
            index = members.nonzero().squeeze(-1)
            positive_on, negative_on = positive[positive_ids == candidate], negative[negative_ids == candidate]
            # A positive click equal to a negative one (the same pixel) ties with it on every Gaussian,
            # so it can keep none; it is dropped so that rounding in the two products cannot break the tie.
            repeated = (positive_on[:, None, :] == negative_on[None, :, :]).all(dim=-1).any(dim=-1)
            closer = select_by_similarity(features[index], positive_on[~repeated], negative_on, threshold=-1.0)
            selected[index[closer]] = True


@torch.no_grad()
def precompute_click_index(features: torch.Tensor, centers: torch.Tensor, chunk_size: int = CHUNK) -> ClickIndex:
    """`precompute_assignment` plus what makes a click fast (unit centres, gather slots): once per level."""
    assignment, similarity = precompute_assignment(features, centers, chunk_size=chunk_size)
    return ClickIndex.from_assignment(assignment, similarity, centers)


@torch.no_grad()
def nearest_candidates(query_features: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Candidate id (argmax cosine) of each clicked pixel feature [P, D_level]; -1 when K == 0.

    The argmax of the dot product with the unit centres: normalising the query scales a row by a
    positive number, which changes no argmax (the same computation as `ClickIndex.select`).
    """
    query_features = _rows(query_features, centers.shape[-1], centers.device)
    if centers.shape[0] == 0 or query_features.shape[0] == 0:
        return torch.full((query_features.shape[0],), -1, dtype=torch.long, device=centers.device)
    return (query_features.float() @ _unit(centers).T).argmax(dim=-1)


@torch.no_grad()
def select_candidates(
    assignment: torch.Tensor,
    candidate_ids: torch.Tensor,
    num_candidates: int,
    similarity: Optional[torch.Tensor] = None,
    threshold: Optional[float] = None,
) -> torch.Tensor:
    """bool [N]: Gaussians assigned to any of `candidate_ids` (and similarity >= threshold).

    A lookup table `keep[K + 1]` gathered by the assignment (`index_select`) is one pass over N,
    faster than `isin` or one `==` per id. Ids outside [0, K) (-1) select nothing: they set the
    extra entry keep[K], which is cleared again (no boolean filter, no host sync).
    """
    if threshold is not None and similarity is None:
        raise ValueError("a similarity threshold needs the per-Gaussian similarity")
    ids = candidate_ids.reshape(-1).long().to(assignment.device)
    if ids.numel() == 0:
        return torch.zeros(assignment.shape, dtype=torch.bool, device=assignment.device)
    keep = torch.zeros(num_candidates + 1, dtype=torch.bool, device=assignment.device)
    valid = (ids >= 0) & (ids < num_candidates)
    keep.index_fill_(0, torch.where(valid, ids, torch.full_like(ids, num_candidates)), True)
    keep[num_candidates] = False
    selected = _gather(keep, assignment)
    if threshold is not None:
        selected &= similarity >= threshold
    return selected


@torch.no_grad()
def click_candidate_ids(
    centers: torch.Tensor,
    positive_features: torch.Tensor,
    negative_features: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kept, conflicted, negative) candidate ids of a set of clicks, each sorted and unique.

    kept = positive candidates not hit by any negative click; conflicted = candidates hit by both.
    For inspection (it syncs with the host); `ClickIndex.select` does not use it.
    """
    positive = torch.unique(nearest_candidates(positive_features, centers))
    negative_features = _rows(negative_features, centers.shape[-1], centers.device)
    negative = torch.unique(nearest_candidates(negative_features, centers))
    positive, negative = positive[positive >= 0], negative[negative >= 0]
    in_negative = torch.isin(positive, negative)
    return positive[~in_negative], positive[in_negative], negative


@torch.no_grad()
def select_by_clicks(
    assignment: torch.Tensor,
    similarity: torch.Tensor,
    centers: torch.Tensor,
    positive_features: torch.Tensor,
    negative_features: Optional[torch.Tensor] = None,
    threshold: Optional[float] = None,
    features: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """bool [N]: the Gaussians of the candidates the positive clicks pick, minus the negatives'.

    assignment, similarity: from `precompute_assignment` on the same level; centers [K, D_level];
    positive_features [P, D_level], negative_features [Q, D_level]: rendered features at the
    clicked pixels. threshold: also require cosine to the assigned candidate >= threshold.

    Conflicts (a negative click on a candidate that a positive click also picked): the negative
    wins and the whole candidate is dropped, because a candidate is the unit of selection and the
    user said that pixel is not the object (switch to the fine level to split it). If `features`
    [N, D_level] is given, the conflicted candidate is split instead, by the clicks on it alone: its
    Gaussians whose cosine to the nearest positive click on it exceeds that to every negative click
    on it stay (so the same pixel clicked positive then negative removes the candidate).

    Convenience form of `ClickIndex.select` that normalises the centres on every call and gathers
    by the assignment itself; for interactive use build the index once (`precompute_click_index`).
    """
    index = ClickIndex(assignment, similarity, _unit(centers.to(assignment.device)), None)
    return index.select(positive_features, negative_features, threshold, features=features)


@torch.no_grad()
def select_by_similarity(
    features: torch.Tensor,
    positive_features: torch.Tensor,
    negative_features: Optional[torch.Tensor] = None,
    threshold: float = 0.8,
    chunk_size: int = CHUNK,
) -> torch.Tensor:
    """bool [N]: raw-feature selection for when there are no candidates (K == 0) or it is asked for.

    A Gaussian is selected when its best cosine to the positive clicks is > threshold and, with
    negative clicks, strictly greater than its best cosine to the negatives. Default 0.8 sits
    above the fine push margin (0.75): features of different parts are trained below it.
    """
    dim = features.shape[-1]
    pos = F.normalize(_rows(positive_features, dim, features.device).float(), dim=-1)
    neg = F.normalize(_rows(negative_features, dim, features.device).float(), dim=-1)
    selected = torch.zeros(features.shape[0], dtype=torch.bool, device=features.device)
    if pos.shape[0] == 0:
        return selected
    for start in range(0, features.shape[0], chunk_size):
        f = F.normalize(features[start : start + chunk_size].float(), dim=-1)
        best_pos = (f @ pos.T).amax(dim=-1)
        chunk = best_pos > threshold
        if neg.shape[0] > 0:
            chunk &= best_pos > (f @ neg.T).amax(dim=-1)
        selected[start : start + chunk_size] = chunk
    return selected


@torch.no_grad()
def rank_candidates_by_text(
    text_embedding: torch.Tensor,
    candidate_embeddings: torch.Tensor,
    has_embedding: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ids, cosines) of the candidates that carry a CLIP embedding, best first.

    Candidates without one (has_embedding False, or a non-finite row) are left out. Accepts
    torch tensors or numpy arrays (as `clip_embeddings` returns them).
    """
    emb = torch.as_tensor(candidate_embeddings).float()
    text_embedding = torch.as_tensor(text_embedding)
    valid = torch.isfinite(emb).all(dim=-1)
    if has_embedding is not None:
        valid &= torch.as_tensor(has_embedding).to(valid.device).bool()
    ids = valid.nonzero().squeeze(-1)
    if ids.numel() == 0:
        return ids, torch.zeros(0, dtype=torch.float32, device=emb.device)
    text = F.normalize(text_embedding.float().reshape(-1), dim=-1).to(emb.device)
    scores = F.normalize(emb[ids], dim=-1) @ text
    order = torch.argsort(scores, descending=True, stable=True)
    return ids[order], scores[order]


@torch.no_grad()
def select_by_text(
    text_embedding: torch.Tensor,
    candidate_embeddings: torch.Tensor,
    has_embedding: Optional[torch.Tensor] = None,
    top_k: int = 1,
    margin: Optional[float] = None,
) -> torch.Tensor:
    """Candidate ids [<= top_k] a phrase names, best first; pass them to `select_candidates`.

    Rule: rank candidates by cosine between the CLIP text embedding and their aggregated CLIP
    image embedding; keep the best one, plus the next ones (up to top_k in all) whose cosine is
    within `margin` of the best when a margin is given (an object split over several candidates
    scores alike; unrelated ones do not), or simply the top_k when it is not. CLIP cosines of
    matching and non-matching crops differ by a few hundredths, so margins are small (0.01-0.03).
    Returns an empty tensor when no candidate carries an embedding.
    """
    ids, scores = rank_candidates_by_text(text_embedding, candidate_embeddings, has_embedding)
    ids, scores = ids[: max(top_k, 1)], scores[: max(top_k, 1)]
    if margin is not None and ids.numel() > 0:
        ids = ids[scores >= scores[0] - margin]
    return ids


@torch.no_grad()
def segment_everything_by_candidates(
    assignment: torch.Tensor, similarity: Optional[torch.Tensor] = None, threshold: Optional[float] = None
) -> torch.Tensor:
    """labels [N]: each Gaussian's candidate id (so labels map back to candidates), -1 when it
    has none or its cosine to it is below `threshold`."""
    labels = assignment.clone()
    if threshold is not None and similarity is not None:
        labels[similarity < threshold] = -1
    return labels


@torch.no_grad()
def segment_everything_by_clustering(
    positions: torch.Tensor,
    features: torch.Tensor,
    physical_weight: float = 1.0,
    feature_weight: float = 0.25,
    num_segments: Optional[int] = None,
    min_cluster_size: Optional[int] = None,
    min_samples: int = 10,
    sample_size: int = 10000,
    feature_dims: Optional[int] = 16,
    prototypes_per_cluster: int = 8,
    seed: int = 0,
    chunk_size: int = 1 << 16,
) -> torch.Tensor:
    """labels [N] (0 = largest segment): cluster all Gaussians by position and feature.

    The source project's "segment everything": a weighted sum of physical and feature distance,
    physical weighted high, separates objects better than feature distance alone. Both go into
    one Euclidean space z = [physical_weight * p, feature_weight * f], so the squared distance is
    the weighted sum w_p^2 |dp|^2 + w_f^2 |df|^2, where p is the position centred on the median
    and divided by the median distance to it (robust to floaters) and f the L2-normalised feature.
    To scale to millions, a random sample is clustered (k-means when `num_segments` is given,
    HDBSCAN otherwise), each cluster is summarised by a few k-means prototypes (which keep the
    shape of elongated clusters) and every Gaussian takes the label of its nearest prototype,
    in chunks. Every Gaussian is labelled (HDBSCAN noise in the sample forms no cluster).

    Args:
        positions: [N, 3] Gaussian means. features: [N, Dd], e.g. distilled DINO features.
        physical_weight: 1.0, in units of the scene's median radius.
        feature_weight: 0.25, so two orthogonal features (|df| = 1.41) are as far apart as
            points 0.35 median radii apart: position dominates, features split touching objects.
        num_segments: k for k-means; None (default) lets HDBSCAN choose.
        min_cluster_size: HDBSCAN's; default sample / 200 (at least 10), so segments under
            ~0.5% of the Gaussians join a neighbour.
        min_samples: HDBSCAN's, 10: ~0.5 s on 10k points; its default (= min_cluster_size)
            is several times slower.
        sample_size: 10000 Gaussians clustered.
        feature_dims: 16, PCA of the features fitted on the sample (quality and speed of the
            clustering both suffer in high dimension); None keeps them all.
        prototypes_per_cluster: 8 per cluster for the final nearest-prototype assignment.
        seed: sampling and k-means seed (the result is deterministic).
        chunk_size: Gaussians per chunk of the final assignment.
    """
    from sklearn.cluster import KMeans

    n = positions.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long, device=positions.device)
    check_finite_features(features)  # scikit-learn's own error would not say why
    generator = np.random.default_rng(seed)
    sample = np.sort(generator.choice(n, size=min(sample_size, n), replace=False))
    embed = _clustering_embedding(
        positions, features, torch.from_numpy(sample), physical_weight, feature_weight, feature_dims
    )
    z_sample = embed(torch.from_numpy(sample)).numpy()

    if num_segments is not None:
        k = max(1, min(num_segments, len(sample)))
        sample_labels = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(z_sample)
    else:
        import hdbscan

        size = min_cluster_size or max(10, len(sample) // 200)
        sample_labels = hdbscan.HDBSCAN(min_cluster_size=size, min_samples=min_samples).fit_predict(z_sample)
        if (sample_labels < 0).all():
            sample_labels = np.zeros(len(sample), dtype=np.int64)

    # Relabel by size (largest = 0) so labels, and the colours made from them, are stable.
    ids, counts = np.unique(sample_labels[sample_labels >= 0], return_counts=True)
    ids = ids[np.argsort(-counts, kind="stable")]
    prototypes, prototype_labels = [], []
    for label, cluster in enumerate(ids):
        members = z_sample[sample_labels == cluster]
        m = min(prototypes_per_cluster, len(members))
        if m > 1:
            centres = KMeans(n_clusters=m, n_init=1, random_state=seed).fit(members).cluster_centers_
        else:
            centres = members.mean(0, keepdims=True)
        prototypes.append(centres)
        prototype_labels += [label] * len(centres)
    proto = torch.from_numpy(np.concatenate(prototypes)).float()
    proto_labels = torch.tensor(prototype_labels, dtype=torch.long)
    proto_sq = (proto * proto).sum(-1)

    labels = torch.empty(n, dtype=torch.long)
    for start in range(0, n, chunk_size):
        z = embed(torch.arange(start, min(start + chunk_size, n)))
        # argmin |z - p|^2 = argmin |p|^2 - 2 z.p
        labels[start : start + chunk_size] = proto_labels[(proto_sq - 2.0 * z @ proto.T).argmin(dim=-1)]
    return labels.to(positions.device)


def _clustering_embedding(
    positions: torch.Tensor,
    features: torch.Tensor,
    sample: torch.Tensor,
    physical_weight: float,
    feature_weight: float,
    feature_dims: Optional[int],
):
    """A function index -> z rows of the weighted (position, feature) space, fitted on the sample."""
    pos = positions.detach().float().cpu()
    feat = features.detach().float().cpu()
    centre = pos[sample].median(dim=0).values
    scale = (pos[sample] - centre).norm(dim=-1).median().clamp_min(1e-12)
    basis = None
    if feature_dims is not None and feat.shape[-1] > feature_dims:
        f = F.normalize(feat[sample], dim=-1)
        mean = f.mean(0)
        _, _, v = torch.linalg.svd(f - mean, full_matrices=False)
        basis = v[:feature_dims].T

    def embed(index: torch.Tensor) -> torch.Tensor:
        p = (pos[index] - centre) / scale
        f = F.normalize(feat[index], dim=-1)
        if basis is not None:
            # Centring does not change distances, so project without it.
            f = f @ basis
        return torch.cat([physical_weight * p, feature_weight * f], dim=-1)

    return embed


def _gather(table: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """table[assignment] for a K+1 table: unassigned Gaussians (-1) read the extra entry table[K]."""
    if assignment.device.type == "cpu":
        # index_select is ~3x faster than advanced indexing on CPU but rejects -1; on CUDA an
        # out-of-range index_select is a device-side assert, so it is only tried here.
        try:
            return table.index_select(0, assignment)
        except IndexError:
            pass
    return table[assignment]  # negative indices wrap: -1 -> K


def _unit(centers: torch.Tensor) -> torch.Tensor:
    """[K, D] float32 unit rows (the candidates are unit already; this makes sure, once)."""
    return F.normalize(centers.float(), dim=-1)


def _rows(features: Optional[torch.Tensor], dim: int, device: torch.device) -> torch.Tensor:
    """Clicked features as [P, dim] on `device` (None -> [0, dim]); a level mismatch is an error."""
    if features is None:
        return torch.zeros(0, dim, device=device)
    if features.shape[-1] != dim:
        raise ValueError(
            f"clicked features have {features.shape[-1]} channels but this level has {dim}: "
            "take the same level_features of the rendered feature as of the Gaussians"
        )
    return features.reshape(-1, dim).to(device)
