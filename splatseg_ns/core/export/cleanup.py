"""Clean an object's selection before export: drop the Gaussians that belong to it only weakly.

The source projects found that selecting Gaussians after training is what gives a clean object,
but a raw selection still carries (a) Gaussians that are only nearest to the clicked candidate,
not close to it, and (b) floaters: small groups far from the object that happen to share its
feature. Three filters, each optional, applied in this order to the selected Gaussians only:
1. similarity to the assigned candidate (or vote share) below a threshold, when the Gaussian's
   own neighbourhood disagrees too: fewer than `min_agreement` of its k nearest Gaussians (of the
   whole scene) are selected. One global threshold cannot serve every object: a thin part's
   Gaussians straddle its border and share their weight with what lies behind, yet sit among
   their own; haze and bleed around an object sit among the background's or the neighbour's;
2. statistical outlier removal (as Open3D's): mean distance to the k nearest selected
   neighbours more than `std_ratio` standard deviations above the average;
3. connected components of the k-nearest-neighbour graph cut at `radius_factor` x the median
   nearest-neighbour distance; components smaller than `min_component_fraction` of the largest
   are dropped (so an object of a few separate pieces, e.g. a pair of shoes, keeps them all).
Positions only (means, not extents); scipy's cKDTree keeps 100k selected Gaussians at ~1 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class Cleanup:
    """The members an export keeps, and how many each filter dropped."""

    keep: np.ndarray
    """bool [N]: the selected Gaussians that stay."""
    dropped: Dict[str, int]
    """Reason -> Gaussians dropped for it, in the filters' order: "weak" (unsure of their label), "non-finite"
    (positions of a diverged run), "outliers" (far from their neighbours), "floaters" (pieces apart from the object)."""


def clean_selection(
    means,
    selected,
    similarity=None,
    similarity_threshold: Optional[float] = 0.5,
    min_agreement: Optional[float] = 0.5,
    num_neighbours: int = 16,
    std_ratio: Optional[float] = 3.0,
    radius_factor: Optional[float] = 8.0,
    min_component_fraction: float = 0.1,
) -> Cleanup:
    """`selected` minus the weakly belonging Gaussians (see the module docstring), and why each went.

    means [N, 3]; selected bool [N]; similarity [N] cosine to the assigned candidate, or None.
    Args (None disables a filter):
        similarity_threshold: default 0.5 = the coarse push margin tau_coarse: Click-Gaussian
            trains non-members of a candidate below it, so a member under it is ambiguous.
            Use 0.75 (tau_fine) for fine-level selections.
        min_agreement: a member under the threshold stays when at least this share of its
            `num_neighbours` nearest Gaussians are selected too (None: every member under it goes).
        num_neighbours: k of the kNN used by both geometric filters (default 16).
        std_ratio: outlier cut, in standard deviations of the mean kNN distance (default 3.0).
        radius_factor: kNN edges longer than this x the median nearest-neighbour distance are
            cut before taking components (default 8.0; 4.0 cut real objects of uneven density
            into pieces: 0.09 less rendered IoU on the demo, 0.08 on the fox).
        min_component_fraction: keep components of at least this fraction of the largest.
    Accepts numpy arrays or torch tensors.
    """
    means = _numpy(means).astype(np.float64, copy=False).reshape(-1, 3)
    keep = _numpy(selected).astype(bool).reshape(-1).copy()
    dropped = {"weak": 0, "non-finite": 0, "outliers": 0, "floaters": 0}
    finite = np.isfinite(means).all(axis=1)
    if similarity is not None and similarity_threshold is not None:
        weak = keep & (_numpy(similarity).reshape(-1) < similarity_threshold)
        if min_agreement is not None and weak.any():
            weak[weak & finite] &= neighbour_agreement(means, keep, np.flatnonzero(weak & finite),
                                                       num_neighbours) < min_agreement
        dropped["weak"] = int(weak.sum())
        keep &= ~weak
    dropped["non-finite"] = int((keep & ~finite).sum())
    index = np.flatnonzero(keep & finite)
    keep[:] = False
    if index.size <= num_neighbours + 1:
        keep[index] = True
        return Cleanup(keep, dropped)

    points = means[index]
    tree = cKDTree(points)
    # k + 1: each point's nearest neighbour is itself.
    distances, neighbours = tree.query(points, k=num_neighbours + 1, workers=-1)
    distances, neighbours = distances[:, 1:], neighbours[:, 1:]
    inlier = np.ones(index.size, dtype=bool)

    if std_ratio is not None:
        mean_distance = distances.mean(axis=1)
        inlier &= mean_distance <= mean_distance.mean() + std_ratio * mean_distance.std()
        dropped["outliers"] = int((~inlier).sum())

    if radius_factor is not None:
        # Median over positive distances: duplicated means must not shrink the radius to 0.
        nearest = distances[:, 0][distances[:, 0] > 0]
        radius = radius_factor * (np.median(nearest) if nearest.size else 0.0)
        edge = (distances <= radius) & inlier[:, None] & inlier[neighbours]
        rows = np.repeat(np.arange(index.size), num_neighbours)[edge.reshape(-1)]
        ones = np.ones(rows.size, dtype=np.int8)
        graph = coo_matrix((ones, (rows, neighbours[edge])), shape=(index.size, index.size))
        _, component = connected_components(graph, directed=False)
        sizes = np.bincount(component[inlier], minlength=component.max() + 1)
        in_piece = sizes[component] >= min_component_fraction * sizes.max()
        dropped["floaters"] = int((inlier & ~in_piece).sum())
        inlier &= in_piece

    keep[index[inlier]] = True
    return Cleanup(keep, dropped)


def neighbour_agreement(means: np.ndarray, selected: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """[len(query)]: the share of each queried Gaussian's k nearest other Gaussians (finite ones, of the
    whole scene) that are selected."""
    finite = np.flatnonzero(np.isfinite(means).all(axis=1))
    reach = min(k + 1, finite.size)
    if reach < 2:
        return np.zeros(query.size)
    _, found = cKDTree(means[finite]).query(means[query], k=reach, workers=-1)
    found = finite[np.asarray(found).reshape(query.size, reach)[:, 1:]]  # the first is the Gaussian itself
    return selected[found].mean(axis=1)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)
