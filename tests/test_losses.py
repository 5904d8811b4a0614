"""The contrastive loss and its pixel sampler, on inputs where the answer is known."""

import torch

from splatseg_ns.core.losses import contrastive_level_loss, sample_pixels, two_level_contrastive_loss


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


def test_sampler_with_no_masks_returns_nothing():
    empty = torch.zeros(10, 10, dtype=torch.long)
    assert sample_pixels(empty, empty, 100).numel() == 0


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


def test_vectorised_loss_matches_the_pairwise_definition():
    torch.manual_seed(3)
    features = torch.randn(40, 5)
    ids = torch.randint(0, 5, (40,))
    out = contrastive_level_loss(features, ids, margin=0.2, negative_weight=0.1)
    pull, push = brute_force_level_loss(features, ids, 0.2, 0.1)
    torch.testing.assert_close(out["pull"], pull)
    torch.testing.assert_close(out["push"], push)
