"""Segment everything: a label for every Gaussian, from the global candidates or by clustering.

Two ways, both used by `splatseg export --segments`:
- by candidates: each Gaussian's global candidate is its segment (Click-Gaussian's assignment,
  the same one clicks use), optionally only above a similarity threshold;
- by clustering position and a distilled feature (DINO, or the segmentation feature), physical
  distance weighted high, as the source projects' "segment everything" does: it separates
  objects better than feature distance alone.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from splatseg_ns.core.pca import principal_axes
from splatseg_ns.core.segment.losses import check_finite_features


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
        _, basis, _ = principal_axes(F.normalize(feat[sample], dim=-1), feature_dims)

    def embed(index: torch.Tensor) -> torch.Tensor:
        p = (pos[index] - centre) / scale
        f = F.normalize(feat[index], dim=-1)
        if basis is not None:
            # Centring does not change distances, so project without it.
            f = f @ basis
        return torch.cat([physical_weight * p, feature_weight * f], dim=-1)

    return embed
