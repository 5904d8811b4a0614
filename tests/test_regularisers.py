"""The feature regularisers (3D norm, 2D norm, spatial smoothness) and the kNN they rely on."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from splatseg_ns.core.losses import (
    feature_norm_2d_loss,
    feature_norm_3d_loss,
    knn_indices,
    spatial_smoothness_loss,
)


def _unit_parts(num: int, coarse_dim: int, dim: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = F.normalize(torch.randn(num, coarse_dim, generator=gen), dim=-1)
    rest = F.normalize(torch.randn(num, dim - coarse_dim, generator=gen), dim=-1)
    return torch.cat([coarse, rest], dim=-1)


# --- norms ------------------------------------------------------------------------------------


def test_3d_norm_is_zero_for_unit_parts_and_hand_computed_elsewhere():
    features = _unit_parts(6, 3, 8)
    torch.testing.assert_close(feature_norm_3d_loss(features, 3), torch.tensor(0.0))
    # coarse part of norm 2 (error 1), rest of norm 0 (error 1), on one of two Gaussians
    features = torch.tensor([[2.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 1.0]])
    torch.testing.assert_close(feature_norm_3d_loss(features, 2, weight=1.0), torch.tensor(0.5 + 0.5))
    torch.testing.assert_close(feature_norm_3d_loss(features, 2), torch.tensor(0.2))  # paper weight


def test_3d_norm_gradient_restores_unit_norms_and_is_finite_at_zero():
    features = torch.tensor([[0.5, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 0.0]], requires_grad=True)
    feature_norm_3d_loss(features, 2).backward()
    assert torch.isfinite(features.grad).all()
    moved = features.detach() - 0.5 * features.grad
    assert moved[0, :2].norm() > 0.5 and moved[0, 2:].norm() < 3.0


def test_2d_norm_is_zero_at_one_and_sqrt_two():
    rendered = _unit_parts(5, 4, 10)  # unit coarse + unit rest: coarse norm 1, whole sqrt 2
    torch.testing.assert_close(feature_norm_2d_loss(rendered, 4), torch.tensor(0.0))
    half = 0.5 * rendered  # blended disagreeing features come out short
    expected = 0.2 * ((0.5 - 1.0) ** 2 + (0.5 * math.sqrt(2.0) - math.sqrt(2.0)) ** 2)
    torch.testing.assert_close(feature_norm_2d_loss(half, 4), torch.tensor(expected))
    coarse_only = torch.cat([rendered[:, :4], torch.zeros(5, 6)], dim=-1)  # fine norm 1, not sqrt 2
    assert feature_norm_2d_loss(coarse_only, 4) > 0


# --- kNN --------------------------------------------------------------------------------------


def _brute_force_knn(means: torch.Tensor, k: int) -> torch.Tensor:
    dist = torch.cdist(means.double(), means.double())
    dist.fill_diagonal_(float("inf"))
    return dist.topk(k, dim=-1, largest=False).indices


@pytest.mark.parametrize("backend", ["kdtree", "cdist"])
@pytest.mark.parametrize("num", [1, 4, 300])
def test_knn_matches_brute_force(backend, num, monkeypatch):
    if backend == "cdist":
        monkeypatch.setitem(sys.modules, "scipy.spatial", None)  # import fails: the torch fallback runs
    means = torch.rand(num, 3, generator=torch.Generator().manual_seed(num), dtype=torch.float64)
    neighbours = knn_indices(means, k=5)
    k = min(5, num - 1)
    assert neighbours.shape == (num, k) and neighbours.dtype == torch.long
    if k:
        # compare as sets (order among equal-distance neighbours is free)
        assert (neighbours.sort(dim=1).values == _brute_force_knn(means, k).sort(dim=1).values).all()
        assert (neighbours != torch.arange(num)[:, None]).all()


def test_knn_excludes_self_among_duplicates():
    means = torch.zeros(8, 3)  # all at one point: every other Gaussian is a nearest neighbour
    neighbours = knn_indices(means, k=3)
    assert neighbours.shape == (8, 3)
    assert (neighbours != torch.arange(8)[:, None]).all()


# --- spatial smoothness -----------------------------------------------------------------------


def test_smoothness_is_zero_for_constant_features():
    means = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    features = torch.randn(1, 6).repeat(50, 1) * torch.rand(50, 1)  # same direction, any length
    loss = spatial_smoothness_loss(features, knn_indices(means, 5))
    torch.testing.assert_close(loss, torch.tensor(0.0), atol=1e-6, rtol=0)


def test_smoothness_value_and_gradient_pull_neighbours_together():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    neighbours = torch.tensor([[1], [0], [0]])
    loss = spatial_smoothness_loss(features, neighbours, weight=1.0)
    expected = ((1 - 0.0) + (1 - 0.0) + (1 - 1 / math.sqrt(2.0))) / 3
    torch.testing.assert_close(loss, torch.tensor(expected))
    loss.backward()
    before = F.normalize(features.detach(), dim=-1)
    after = F.normalize(features.detach() - 0.1 * features.grad, dim=-1)
    assert after[0] @ after[1] > before[0] @ before[1]
    assert after[2] @ after[0] > before[2] @ before[0]


def test_smoothness_samples_gaussians():
    gen = torch.Generator().manual_seed(0)
    means = torch.rand(200, 3, generator=gen)
    neighbours = knn_indices(means, 5)
    features = torch.randn(200, 4, generator=gen, requires_grad=True)
    full = spatial_smoothness_loss(features, neighbours, num_samples=10_000)
    unit = F.normalize(features.detach(), dim=-1)
    torch.testing.assert_close(full, 0.5 * (1 - (unit[:, None] * unit[neighbours]).sum(-1)).mean())
    sampled = spatial_smoothness_loss(features, neighbours, num_samples=10, generator=gen)
    sampled.backward()
    touched = int((features.grad.abs().sum(dim=-1) > 0).sum())
    assert 10 <= touched <= 10 * 6  # the samples and their neighbours only


def test_smoothness_with_no_neighbours_is_zero_and_keeps_the_graph():
    features = torch.randn(1, 4, requires_grad=True)
    loss = spatial_smoothness_loss(features, knn_indices(torch.zeros(1, 3), 5))
    loss.backward()
    assert loss.item() == 0.0 and (features.grad == 0).all()
