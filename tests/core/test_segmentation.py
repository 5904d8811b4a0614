"""Segment everything: by candidates, and by clustering position and feature."""

from __future__ import annotations

import pytest
import torch

from splatseg_ns.core.segment.segmentation import segment_everything_by_candidates, segment_everything_by_clustering


def orthogonal_centers(k: int, dim: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))
    return q[:k]


def _same_partition(labels: torch.Tensor, truth: torch.Tensor) -> bool:
    from sklearn.metrics import adjusted_rand_score

    return adjusted_rand_score(truth.numpy(), labels.numpy()) == 1.0


def test_segment_everything_by_candidates():
    assignment = torch.tensor([0, 1, 1, -1])
    similarity = torch.tensor([0.9, 0.3, 0.95, -1.0])
    assert segment_everything_by_candidates(assignment).tolist() == [0, 1, 1, -1]
    assert segment_everything_by_candidates(assignment, similarity, 0.5).tolist() == [0, -1, 1, -1]


@pytest.mark.parametrize("num_segments", [None, 3])
def test_clustering_recovers_separated_blobs(num_segments):
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0, 0], [5, 0, 0], [0, 5, 0]])
    truth = torch.arange(3).repeat_interleave(2000)
    positions = centres[truth] + 0.3 * torch.randn(truth.numel(), 3, generator=g)
    features = torch.randn(3, 64, generator=g)[truth] + 0.1 * torch.randn(truth.numel(), 64, generator=g)
    labels = segment_everything_by_clustering(
        positions, features, num_segments=num_segments, sample_size=1500, chunk_size=1000
    )
    assert labels.shape == truth.shape and _same_partition(labels, truth)
    assert torch.bincount(labels).tolist() == sorted(torch.bincount(labels).tolist(), reverse=True)


def test_physical_weight_separates_blobs_with_identical_features():
    g = torch.Generator().manual_seed(1)
    truth = torch.arange(2).repeat_interleave(1500)
    positions = torch.tensor([[0.0, 0, 0], [4, 0, 0]])[truth] + 0.3 * torch.randn(truth.numel(), 3, generator=g)
    features = torch.randn(1, 32, generator=g).expand(truth.numel(), 32) + 0.05 * torch.randn(
        truth.numel(), 32, generator=g
    )
    labels = segment_everything_by_clustering(positions, features, physical_weight=4.0, num_segments=2)
    assert _same_partition(labels, truth)
    hdb = segment_everything_by_clustering(positions, features, physical_weight=4.0)
    assert _same_partition(hdb, truth)


def test_clustering_uses_features_where_positions_overlap():
    # Two interleaved objects in one place, told apart by their features only.
    g = torch.Generator().manual_seed(2)
    truth = torch.arange(2).repeat_interleave(1000)
    positions = 0.3 * torch.randn(truth.numel(), 3, generator=g)
    features = orthogonal_centers(2, 16)[truth] + 0.05 * torch.randn(truth.numel(), 16, generator=g)
    labels = segment_everything_by_clustering(positions, features, feature_weight=4.0, num_segments=2)
    assert _same_partition(labels, truth)
