"""Click-Gaussian's contrastive loss, its regularisers (norms, kNN smoothness) and the NaN guard."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from splatseg_ns.core.segment.losses import (
    NonFiniteFeaturesError,
    check_finite_features,
    contrastive_level_loss,
    feature_norm_2d_loss,
    feature_norm_3d_loss,
    knn_indices,
    sample_pixels,
    spatial_smoothness_loss,
    two_level_contrastive_loss,
)
from tests.helpers import features_with_nan


def brute_force_level_loss(features, ids, margin, weight):
    """The paper's definition, pair by pair."""
    f = torch.nn.functional.normalize(features, dim=-1)
    pos, neg = [], []
    for i in range(len(ids)):
        for j in range(len(ids)):
            if i == j or ids[i] == 0 or ids[j] == 0:
                continue
            c = f[i] @ f[j]
            (pos if ids[i] == ids[j] else neg).append(c)
            if ids[i] != ids[j]:
                neg[-1] = c * (c > margin)
    return -torch.stack(pos).mean(), weight * torch.stack(neg).mean()


def _unit_parts(num: int, coarse_dim: int, dim: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    coarse = F.normalize(torch.randn(num, coarse_dim, generator=gen), dim=-1)
    rest = F.normalize(torch.randn(num, dim - coarse_dim, generator=gen), dim=-1)
    return torch.cat([coarse, rest], dim=-1)


def _brute_force_knn(means: torch.Tensor, k: int) -> torch.Tensor:
    dist = torch.cdist(means.double(), means.double())
    dist.fill_diagonal_(float("inf"))
    return dist.topk(k, dim=-1, largest=False).indices


def test_pull_is_minus_one_when_same_mask_features_agree():
    features = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    ids = torch.tensor([1, 1, 2, 2])
    out = contrastive_level_loss(features, ids, margin=0.5, negative_weight=0.1)
    torch.testing.assert_close(out["pull"], torch.tensor(-1.0))
    torch.testing.assert_close(out["push"], torch.tensor(0.0))  # orthogonal: below the margin


def test_push_counts_only_pairs_above_the_margin():
    # ids 1 and 2 at cos 0.8 (above 0.5), id 3 orthogonal to both
    a = torch.tensor([1.0, 0.0, 0.0])
    b = torch.tensor([0.8, 0.6, 0.0])
    c = torch.tensor([0.0, 0.0, 1.0])
    out = contrastive_level_loss(torch.stack([a, b, c]), torch.tensor([1, 2, 3]), margin=0.5, negative_weight=0.1)
    # 6 ordered negative pairs, two of them (a,b),(b,a) at 0.8
    torch.testing.assert_close(out["push"], torch.tensor(0.1 * 2 * 0.8 / 6))


def test_unmasked_pixels_take_part_in_no_pair():
    features = torch.randn(6, 4)
    ids = torch.tensor([0, 0, 0, 1, 1, 0])
    out = contrastive_level_loss(features, ids, 0.5, 0.1)
    f = torch.nn.functional.normalize(features[3:5], dim=-1)
    torch.testing.assert_close(out["pull"], -(f[0] @ f[1]))
    torch.testing.assert_close(out["push"], torch.tensor(0.0))


def test_gradient_pulls_same_and_pushes_different():
    features = torch.tensor([[1.0, 0.2], [1.0, -0.2], [0.9, 0.5]], requires_grad=True)
    ids = torch.tensor([1, 1, 2])
    out = contrastive_level_loss(features, ids, margin=0.5, negative_weight=1.0)
    (out["pull"] + out["push"]).backward()
    step = -features.grad  # gradient descent direction
    new = torch.nn.functional.normalize(features.detach() + 0.1 * step, dim=-1)
    old = torch.nn.functional.normalize(features.detach(), dim=-1)
    assert new[0] @ new[1] > old[0] @ old[1]  # same mask: closer
    assert new[1] @ new[2] < old[1] @ old[2]  # different masks above the margin: further


def test_fine_push_does_not_move_the_coarse_part():
    torch.manual_seed(0)
    features = torch.randn(8, 6, requires_grad=True)
    coarse_ids = torch.ones(8, dtype=torch.long)  # one object: coarse terms pull only
    fine_ids = torch.tensor([1, 1, 1, 1, 2, 2, 2, 2])
    terms = two_level_contrastive_loss(features, coarse_ids, fine_ids, coarse_dim=3, margin_fine=-1.0)
    terms["contrastive_fine_push"].backward()
    assert features.grad[:, :3].abs().max() == 0
    assert features.grad[:, 3:].abs().max() > 0


def test_sampler_favours_small_masks_and_skips_unmasked():
    coarse = torch.zeros(100, 100, dtype=torch.long)
    coarse[:90] = 1  # big mask: 9000 px
    coarse[95:, :10] = 2  # small mask: 50 px
    fine = coarse.clone()
    index = sample_pixels(coarse, fine, 2000, generator=torch.Generator().manual_seed(0))
    ids = coarse.reshape(-1)[index]
    assert (ids > 0).all()
    assert len(index.unique()) == len(index)
    # equal weight per mask: the 50-pixel mask is sampled as often as it can be, far above its 0.55% area
    assert (ids == 2).sum() == 50


def test_pull_trim_leaves_a_masks_minority_unpulled():
    """One mask over a table (8 samples along x) and a mug (2 samples along y, unlike the rest): with a trim of
    a quarter the mug's samples take part in no pull (their gradient is zero), the table's still do."""
    from splatseg_ns.core.segment.losses import contrastive_level_loss

    features = torch.tensor([[1.0, 0.1 * i] for i in range(8)] + [[0.0, 1.0], [0.1, 1.0]], requires_grad=True)
    ids = torch.ones(10, dtype=torch.long)
    contrastive_level_loss(features, ids, 0.5, 0.1, pull_trim=0.25)["pull"].backward()
    assert features.grad[8:].abs().max() == 0 and features.grad[:8].abs().sum() > 0
    plain = contrastive_level_loss(features, ids, 0.5, 0.1)["pull"]
    trimmed = contrastive_level_loss(features, ids, 0.5, 0.1, pull_trim=0.25)["pull"]
    assert trimmed < plain  # the pairs left agree better than all pairs


def test_mask_interiors_leave_out_borders_but_keep_thin_masks():
    from splatseg_ns.core.segment.losses import mask_interiors

    ids = torch.zeros(16, 16, dtype=torch.int16)
    ids[:, :8], ids[:, 8:] = 1, 2  # two halves meeting at column 8
    ids[4:12, 3] = 3  # a 1-px-wide part inside mask 1
    out = mask_interiors(ids, 2)
    assert (out[:, 6:10] == 0).all()  # two pixels either side of the 1 | 2 border
    assert (out[:, 10:] == 2).all() and (out[0, :2] == 1).all()  # the image's edge is no border
    assert torch.equal(out == 3, ids == 3)  # thinner than the border: keeps all it has
    assert (out[4:12, 1:3] == 0).all() and (out[4:12, 4:6] == 0).all() and out.dtype == ids.dtype
    assert torch.equal(mask_interiors(ids, 0), ids)
    bled = ids.clone()
    bled[:, 8:11] = 1  # mask 1 dilated 3 px over mask 2: those pixels are within 3 px of the border
    assert not (mask_interiors(bled, 3)[:, 8:11] == 1).any()


def test_sampler_with_no_masks_returns_nothing():
    empty = torch.zeros(10, 10, dtype=torch.long)
    assert sample_pixels(empty, empty, 100).numel() == 0


def test_vectorised_loss_matches_the_pairwise_definition():
    torch.manual_seed(3)
    features = torch.randn(40, 5)
    ids = torch.randint(0, 5, (40,))
    out = contrastive_level_loss(features, ids, margin=0.2, negative_weight=0.1)
    pull, push = brute_force_level_loss(features, ids, 0.2, 0.1)
    torch.testing.assert_close(out["pull"], pull)
    torch.testing.assert_close(out["push"], push)


def test_grouped_push_averages_over_the_pairs_inside_one_group_only():
    torch.manual_seed(5)
    features = torch.randn(60, 5)
    ids = torch.randint(0, 7, (60,))
    groups = (ids + 1) // 2  # masks 1-2, 3-4 are parts of two objects; 0 stays unmasked
    groups[ids >= 5] = 0  # parts 5 and 6 have no enclosing mask: not parts of one object, no push
    out = contrastive_level_loss(features, ids, margin=0.0, negative_weight=0.1, push_groups=groups)
    f = F.normalize(features, dim=-1)
    pushes = [f[i] @ f[j] for i in range(60) for j in range(60)
              if i != j and ids[i] > 0 and ids[j] > 0 and ids[i] != ids[j] and groups[i] == groups[j] > 0]
    expected = 0.1 * torch.stack([c * (c > 0.0) for c in pushes]).mean()
    torch.testing.assert_close(out["push"], expected)
    plain = contrastive_level_loss(features, ids, margin=0.0, negative_weight=0.1)
    torch.testing.assert_close(out["pull"], plain["pull"])  # only the push changes
    assert not torch.isclose(out["push"], plain["push"])
    two = two_level_contrastive_loss(_unit_parts(60, 3, 6), groups, ids, 3, fine_push_within_objects=True)
    one = two_level_contrastive_loss(_unit_parts(60, 3, 6), groups, ids, 3)
    assert torch.equal(two["contrastive_coarse_push"], one["contrastive_coarse_push"])
    assert not torch.equal(two["contrastive_fine_push"], one["contrastive_fine_push"])


def test_blockwise_push_is_the_pairwise_push_over_the_pairs_inside_each_block():
    torch.manual_seed(4)
    features = torch.randn(90, 5)
    ids = torch.randint(1, 6, (90,))  # every pixel masked, so blocks are plain slices
    whole = contrastive_level_loss(features, ids, margin=0.1, negative_weight=0.1)
    assert torch.equal(contrastive_level_loss(features, ids, 0.1, 0.1, push_block=500)["push"], whole["push"])
    blocked = contrastive_level_loss(features, ids, margin=0.1, negative_weight=0.1, push_block=32)
    torch.testing.assert_close(blocked["pull"], whole["pull"])  # the pull always sees every pair
    sums, pairs = 0.0, 0
    for start in range(0, 90, 32):
        f, i = features[start : start + 32], ids[start : start + 32]
        _, push = brute_force_level_loss(f, i, 0.1, 0.1)
        negatives = int((i[:, None] != i[None, :]).sum())
        sums, pairs = sums + push * negatives, pairs + negatives
    torch.testing.assert_close(blocked["push"], sums / pairs)
    assert not torch.isclose(blocked["push"], whole["push"])  # a sample of the pairs, not all of them


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


def test_check_finite_features_counts_gaussians_and_names_the_fix():
    check_finite_features(features_with_nan(bad=[]))
    with pytest.raises(NonFiniteFeaturesError) as err:
        check_finite_features(features_with_nan(value=float("inf")), source="runs/x/config.yml", step=2999)
    assert str(err.value) == (
        "runs/x/config.yml: 2 of 100 Gaussians have NaN/inf segmentation features (the feature training diverged by "
        "step 2999). Retrain the features with a lower learning rate (--optimizers.seg-features.optimizer.lr), or "
        "resume from an earlier checkpoint of the run (ns-train ... --load-checkpoint FILE)."
    )
    with pytest.raises(NonFiniteFeaturesError, match=r"^1 of 4 Gaussians have NaN/inf DINO features .*dino-features"):
        check_finite_features(features_with_nan(n=4, bad=[1]), param="dino_features")
