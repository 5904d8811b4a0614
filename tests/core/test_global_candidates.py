"""Global Feature-guided Learning: mask means, clustering into candidates, the GFL loss, CLIP per candidate."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from splatseg_ns.core.segment.global_candidates import (
    GFLConfig,
    GlobalCandidates,
    LevelCandidates,
    assign_to_candidates,
    build_global_candidates,
    cluster_candidates,
    gfl_loss,
    mask_mean_features,
    min_cluster_size_for,
    two_level_gfl_loss,
)
from splatseg_ns.core.segment.losses import NonFiniteFeaturesError
from tests.helpers import make_feature_stage_model


def _groups(directions: torch.Tensor, per_group: int, noise: float, generator: torch.Generator) -> torch.Tensor:
    """per_group noisy copies of each direction, group after group."""
    points = directions.repeat_interleave(per_group, dim=0)
    return points + noise * torch.randn(points.shape, generator=generator)


def _three_groups():
    gen = torch.Generator().manual_seed(0)
    directions = F.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    points = _groups(directions, 20, 0.02, gen) * 3.0  # magnitude must not matter: cosine geometry
    outliers = F.normalize(torch.randn(4, 8, generator=gen), dim=-1)
    return directions, torch.cat([points, outliers])


def _synthetic_views(num_views: int = 10, coarse_dim: int = 4, dim: int = 8, seed: int = 0):
    """Two objects of two parts each. Coarse channels say the object, the rest the part.

    Each view has its own (shuffled) mask ids, as SAM's would be; returns the views and, per
    view, {mask id: object} and {mask id: part} for checking.
    """
    gen = torch.Generator().manual_seed(seed)
    objects = F.normalize(torch.randn(2, coarse_dim, generator=gen), dim=-1)
    parts = F.normalize(torch.randn(4, dim - coarse_dim, generator=gen), dim=-1)
    views, truth = [], []
    for _ in range(num_views):
        part_map = torch.arange(4).repeat_interleave(4).reshape(4, 4).repeat(1, 2)  # [4, 8] part per pixel
        object_map = part_map // 2
        features = torch.cat([objects[object_map], parts[part_map]], dim=-1)
        features = features + 0.01 * torch.randn(features.shape, generator=gen)
        coarse_perm = torch.randperm(20, generator=gen)[:2] + 1
        fine_perm = torch.randperm(20, generator=gen)[:4] + 1
        views.append((features, coarse_perm[object_map], fine_perm[part_map]))
        truth.append(
            ({int(coarse_perm[o]): o for o in range(2)}, {int(fine_perm[p]): p for p in range(4)})
        )
    return views, truth


def _candidates(coarse_centers: torch.Tensor, fine_centers: torch.Tensor, coarse_dim: int) -> GlobalCandidates:
    def level(centers):
        none = torch.zeros(0, dtype=torch.long)
        return LevelCandidates(centers, torch.zeros(0, centers.shape[1]), none, none, none, none)

    return GlobalCandidates(level(coarse_centers), level(fine_centers), coarse_dim, num_views=1)


def test_mask_means_are_exact_on_a_hand_built_map():
    features = torch.arange(12, dtype=torch.float32).reshape(3, 4, 1).repeat(1, 1, 2)
    features[..., 1] *= -1
    ids = torch.tensor([[0, 1, 1, 5], [0, 1, 5, 5], [0, 0, 0, 5]])
    means, mask_ids, areas = mask_mean_features(features, ids)
    torch.testing.assert_close(mask_ids, torch.tensor([1, 5]))
    torch.testing.assert_close(areas, torch.tensor([3, 4]))
    mean_1 = (1 + 2 + 5) / 3
    mean_5 = (3 + 6 + 7 + 11) / 4
    torch.testing.assert_close(means, torch.tensor([[mean_1, -mean_1], [mean_5, -mean_5]]))


def test_mask_means_drop_small_masks_and_handle_empty_views():
    features = torch.randn(3, 4, 5)
    ids = torch.tensor([[0, 1, 1, 5], [0, 1, 5, 5], [0, 0, 0, 5]])
    means, mask_ids, areas = mask_mean_features(features, ids, min_area=4)
    assert mask_ids.tolist() == [5] and areas.tolist() == [4] and means.shape == (1, 5)
    means, mask_ids, areas = mask_mean_features(features, torch.zeros(3, 4, dtype=torch.long))
    assert means.shape == (0, 5) and mask_ids.numel() == 0 and areas.numel() == 0


@pytest.mark.parametrize("library", ["hdbscan", "sklearn"])
def test_three_separated_groups_give_three_candidates(library, monkeypatch):
    if library == "sklearn":
        monkeypatch.setitem(sys.modules, "hdbscan", None)  # import fails: the sklearn fallback runs
    directions, points = _three_groups()
    centers, labels = cluster_candidates(points, min_cluster_size=5, epsilon=1e-2)
    assert centers.shape == (3, 8)
    torch.testing.assert_close(centers.norm(dim=-1), torch.ones(3))
    for group in range(3):
        group_labels = labels[group * 20 : (group + 1) * 20]
        assert (group_labels == group_labels[0]).all() and group_labels[0] >= 0
        assert centers[group_labels[0]] @ directions[group] > 0.99
    assert len(set(labels[:60].tolist())) == 3
    assert (labels[60:] == -1).all()  # the outliers agree with nothing


def test_clustering_degenerate_inputs_give_no_candidates():
    centers, labels = cluster_candidates(torch.zeros(0, 6), min_cluster_size=3, epsilon=1e-2)
    assert centers.shape == (0, 6) and labels.shape == (0,)
    centers, labels = cluster_candidates(torch.randn(2, 6), min_cluster_size=3, epsilon=1e-2)
    assert centers.shape == (0, 6) and labels.tolist() == [-1, -1]
    # scattered points that form no dense group: all noise
    gen = torch.Generator().manual_seed(1)
    centers, labels = cluster_candidates(torch.randn(12, 6, generator=gen), min_cluster_size=6, epsilon=1e-3)
    assert centers.shape == (0, 6) and (labels == -1).all()


def test_min_cluster_size_is_proportional_to_views_with_a_floor():
    assert min_cluster_size_for(200, 0.1) == 20
    assert min_cluster_size_for(24, 0.1) == 3
    assert min_cluster_size_for(5, 0.1) == 2
    assert min_cluster_size_for(5, 0.1, floor=4) == 4


def test_build_finds_objects_at_coarse_and_parts_at_fine():
    views, truth = _synthetic_views()
    config = GFLConfig(min_cluster_size_per_view=0.5)  # 5 masks out of 10 views
    candidates = build_global_candidates(iter(views), coarse_dim=4, config=config)
    assert isinstance(candidates, GlobalCandidates) and candidates.num_views == 10
    assert candidates.coarse.centers.shape == (2, 4)
    assert candidates.fine.centers.shape == (4, 8)
    for level, which in (("coarse", 0), ("fine", 1)):
        found = candidates.level(level)
        assert found.mask_features.shape[0] == found.mask_labels.shape[0] == found.mask_views.shape[0]
        # every (view, mask id) maps to the candidate of its true object / part, one-to-one
        pairs = {
            (truth[v][which][int(i)], int(label))
            for v, i, label in zip(found.mask_views, found.mask_ids, found.mask_labels)
        }
        num_true = 2 if level == "coarse" else 4
        assert len(pairs) == num_true and len({label for _, label in pairs}) == num_true
        assert (found.mask_areas == (16 if level == "coarse" else 8)).all()  # an object: 2 rows of 8


def test_build_tolerates_views_without_masks_and_no_views():
    views, _ = _synthetic_views(num_views=4)
    views[1] = (views[1][0], None, views[1][2])
    candidates = build_global_candidates(views, coarse_dim=4, config=GFLConfig(min_cluster_size_per_view=0.5))
    assert set(candidates.coarse.mask_views.tolist()) == {0, 2, 3}
    assert set(candidates.fine.mask_views.tolist()) == {0, 1, 2, 3}
    empty = build_global_candidates([], coarse_dim=4)
    assert empty.coarse.num_candidates == 0 and empty.fine.num_candidates == 0


def test_assignment_picks_the_most_similar_candidate():
    centers = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    features = torch.tensor([[2.0, 0.1, 0.0], [0.0, 0.2, -3.0], [0.6, 0.8, 0.0], [0.0, 0.0, 0.0]])
    index, cos = assign_to_candidates(features, centers)
    assert index[:3].tolist() == [0, 1, 1]
    torch.testing.assert_close(cos[2], torch.tensor(0.8))
    assert cos[3] == 0.0  # a zero feature is similar to nothing


def test_chunked_assignment_matches_one_block_and_no_candidates_give_minus_one():
    gen = torch.Generator().manual_seed(0)
    features, centers = torch.randn(1000, 6, generator=gen), torch.randn(7, 6, generator=gen)
    index, cos = assign_to_candidates(features, centers)
    chunked_index, chunked_cos = assign_to_candidates(features, centers, chunk_size=33)
    torch.testing.assert_close(chunked_index, index)
    torch.testing.assert_close(chunked_cos, cos)
    reference = (F.normalize(features, dim=-1) @ F.normalize(centers, dim=-1).T).max(dim=-1)
    torch.testing.assert_close(index, reference.indices)
    index, cos = assign_to_candidates(features, torch.zeros(0, 6))
    assert (index == -1).all() and (cos == -1).all()


def test_gfl_values_on_a_hand_computed_case():
    centers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor(
        [
            [1.0, 0.0],  # on target: pull 0, other at cos 0
            [0.96, 0.28],  # target cos 0.96 > 0.9: pull 0.04; other at 0.28 < 0.5
            [0.6, 0.8],  # target cos 0.8: not pulled; other at 0.6 > 0.5: pushed
        ]
    )
    out = gfl_loss(features, centers, margin=0.5, pull_threshold=0.9, weight=2.0)
    torch.testing.assert_close(out["pull"], torch.tensor(2.0 * (0.0 + 0.04) / 2))
    torch.testing.assert_close(out["push"], torch.tensor(2.0 * 0.6 / 3))  # 3 (Gaussian, other) pairs


def test_gfl_gradient_moves_toward_target_and_away_from_a_close_other():
    target = torch.tensor([1.0, 0.0, 0.0])
    other = F.normalize(torch.tensor([0.6, 0.8, 0.0]), dim=0)
    feature = F.normalize(torch.tensor([0.98, 0.2, 0.05]), dim=0)
    assert feature @ target > 0.9 and feature @ other > 0.5  # pulled and pushed
    features = feature[None].clone().requires_grad_(True)
    out = gfl_loss(features, torch.stack([target, other]), margin=0.5, weight=1.0)
    (out["pull"] + out["push"]).backward()
    moved = F.normalize(features.detach() - 0.05 * features.grad, dim=-1)[0]
    assert moved @ target > feature @ target
    assert moved @ other < feature @ other


def test_gfl_without_candidates_is_zero_and_keeps_the_graph():
    features = torch.randn(5, 4, requires_grad=True)
    out = gfl_loss(features, torch.zeros(0, 4), margin=0.5)
    assert out["pull"].item() == 0.0 and out["push"].item() == 0.0
    (out["pull"] + out["push"]).backward()
    assert features.grad is not None and (features.grad == 0).all()


def test_gfl_sample_limits_the_gaussians_touched():
    gen = torch.Generator().manual_seed(0)
    centers = F.normalize(torch.randn(3, 4, generator=gen), dim=-1)
    features = (centers.repeat(20, 1) + 0.3 * torch.randn(60, 4, generator=gen)).requires_grad_(True)
    out = gfl_loss(features, centers, margin=0.0, pull_threshold=-1.0, sample=7, generator=gen)
    (out["pull"] + out["push"]).backward()
    assert int((features.grad.abs().sum(dim=-1) > 0).sum()) == 7


def test_fine_push_does_not_move_the_coarse_part():
    torch.manual_seed(0)
    coarse_dim = 3
    features = torch.randn(10, 6, requires_grad=True)
    fine_centers = F.normalize(features.detach()[:4] + 0.1, dim=-1)  # close to some Gaussians: pushes fire
    candidates = _candidates(torch.zeros(0, coarse_dim), fine_centers, coarse_dim)
    config = GFLConfig(pull_threshold=1.5, max_gaussians=None)  # push only
    out = two_level_gfl_loss(features, candidates, config, margin_fine=0.0)
    assert out["gfl_fine_push"] > 0 and out["gfl_fine_pull"] == 0 and out["gfl_coarse_push"] == 0
    out["gfl_fine_push"].backward()
    assert (features.grad[:, :coarse_dim] == 0).all()
    assert features.grad[:, coarse_dim:].abs().sum() > 0


def test_fine_pull_moves_the_whole_feature():
    coarse_dim = 2
    features = torch.tensor([[1.0, 0.1, 1.0, 0.1]], requires_grad=True)
    candidates = _candidates(torch.zeros(0, coarse_dim), F.normalize(torch.ones(1, 4), dim=-1), coarse_dim)
    out = two_level_gfl_loss(features, candidates, GFLConfig(pull_threshold=0.5))
    out["gfl_fine_pull"].backward()
    assert (features.grad[0, :coarse_dim].abs() > 0).all() and (features.grad[0, coarse_dim:].abs() > 0).all()


def test_two_level_loss_uses_coarse_channels_for_coarse_candidates():
    coarse_dim = 2
    features = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    candidates = _candidates(torch.tensor([[1.0, 0.0], [0.6, 0.8]]), torch.zeros(0, 4), coarse_dim)
    out = two_level_gfl_loss(features, candidates, GFLConfig(weight=1.0))
    torch.testing.assert_close(out["gfl_coarse_pull"], torch.tensor(0.0))
    torch.testing.assert_close(out["gfl_coarse_push"], torch.tensor(0.6))  # 0.6 > tau_coarse 0.5
    assert out["gfl_fine_pull"] == 0 and out["gfl_fine_push"] == 0


def test_candidate_embeddings_average_their_masks_embeddings():
    from splatseg_ns.core.segment.global_candidates import LevelCandidates, candidate_embeddings

    # two views; candidate 0 gathers (view 0, id 3) and (view 1, id 1); candidate 1 gathers (view 0, id 5)
    level = LevelCandidates(
        centers=torch.eye(3)[:2],
        mask_features=torch.zeros(4, 3),
        mask_labels=torch.tensor([0, 1, 0, -1]),
        mask_views=torch.tensor([0, 0, 1, 1]),
        mask_ids=torch.tensor([3, 5, 1, 2]),
        mask_areas=torch.ones(4),
    )
    e = torch.eye(4)
    per_view = [(torch.tensor([3, 5]), e[[0, 1]]), (torch.tensor([1, 2]), e[[2, 3]])]
    out = candidate_embeddings(level, per_view)
    assert out.shape == (2, 4)
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0, 1, 0]) / 2**0.5)
    torch.testing.assert_close(out[1], e[1])


def test_near_copies_of_one_cluster_merge_and_distinct_ones_stay():
    from splatseg_ns.core.segment.global_candidates import merge_close_clusters

    gen = torch.Generator().manual_seed(3)
    a, b = F.normalize(torch.randn(2, 8, generator=gen), dim=-1)
    a2 = F.normalize(a + 0.1 * F.normalize(torch.randn(8, generator=gen), dim=0), dim=0)  # cos(a, a2) > 0.99
    unit = torch.stack([a, a, b, b, a2, a2])
    labels = torch.tensor([0, 0, 1, 1, 2, -1])
    merged = merge_close_clusters(unit, labels, above=0.9)
    assert merged.tolist() == [0, 0, 1, 1, 0, -1]
    assert merge_close_clusters(unit, labels, above=0.999).tolist() == labels.tolist()


def test_close_clusters_whose_masks_share_views_are_two_parts_and_stay_apart():
    from splatseg_ns.core.segment.global_candidates import merge_close_clusters

    gen = torch.Generator().manual_seed(3)
    a = F.normalize(torch.randn(8, generator=gen), dim=0)
    a2 = F.normalize(a + 0.1 * F.normalize(torch.randn(8, generator=gen), dim=0), dim=0)  # cos(a, a2) > 0.99
    unit = torch.stack([a, a, a, a2, a2, a2])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    # Near-copies of one part: each view holds one mask, in one copy or the other.
    assert merge_close_clusters(unit, labels, 0.9, torch.tensor([0, 1, 2, 3, 4, 5])).tolist() == [0] * 6
    # Two parts not yet apart: both are masked, separately, in the same views.
    parts = merge_close_clusters(unit, labels, 0.9, torch.tensor([0, 1, 2, 0, 1, 2]))
    assert parts.tolist() == [0, 0, 0, 1, 1, 1]
    # A few shared views (a noisy mask split in two) do not keep near-copies apart.
    assert merge_close_clusters(unit, labels, 0.9, torch.tensor([0, 1, 2, 0, 4, 5]), 0.5).tolist() == [0] * 6


def test_a_single_tight_group_becomes_one_candidate_not_two_or_none():
    """One object seen in every view: HDBSCAN never keeps a lone cluster whole."""
    gen = torch.Generator().manual_seed(0)
    direction = F.normalize(torch.randn(1, 12, generator=gen), dim=-1)
    points = _groups(direction, 40, 0.05, gen)
    without, _ = cluster_candidates(points, min_cluster_size=5, epsilon=1e-2)
    centers, labels = cluster_candidates(points, min_cluster_size=5, epsilon=1e-2, merge_above=0.9)
    assert without.shape[0] != 1  # HDBSCAN alone: split into copies, or nothing
    assert centers.shape[0] == 1 and (labels == 0).all() and centers[0] @ direction[0] > 0.99
    # scattered points still give nothing
    centers, _ = cluster_candidates(torch.randn(12, 6, generator=gen), min_cluster_size=6, epsilon=1e-3, merge_above=0.9)
    assert centers.shape[0] == 0
    # three separated groups stay three
    directions, points = _three_groups()
    assert cluster_candidates(points, min_cluster_size=5, epsilon=1e-2, merge_above=0.9)[0].shape[0] == 3


def test_global_candidates_refuse_nan_features():
    """GFL's refresh (and the select tool's fallback) would hand NaN mask averages to HDBSCAN."""
    from nerfstudio.cameras.cameras import Cameras

    model = make_feature_stage_model(80)
    poses = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0]]] * 4)
    cameras = Cameras(camera_to_worlds=poses, fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)
    generator = torch.Generator().manual_seed(0)
    cached = [{"coarse_mask": torch.randint(0, 3, (32, 32), generator=generator),
               "fine_mask": torch.randint(0, 5, (32, 32), generator=generator)} for _ in range(4)]
    datamanager = SimpleNamespace(train_dataset=SimpleNamespace(cameras=cameras), cached_train=cached)
    model.step = 2500
    with torch.no_grad():
        model.seg_features[:] = float("nan")
    with pytest.raises(NonFiniteFeaturesError, match=r"80 of 80 Gaussians have NaN/inf .*diverged by step 2500"):
        model.refresh_global_candidates(datamanager)
