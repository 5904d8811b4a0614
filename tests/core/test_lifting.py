"""Mask lifting: weights from the render's backward, mask labels from mean features, votes."""

from __future__ import annotations

import torch

from splatseg_ns.core.render.rasterize import rasterize
from splatseg_ns.core.segment.lifting import (
    IGNORE,
    VoteConfig,
    cast_votes,
    compact,
    mask_labels,
    one_hot_labels,
    rendered_weights,
    tally_votes,
)


def two_gaussians_one_behind_the_other():
    """A small opaque-ish Gaussian A in front of a large one B: B is visible only around A."""
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 4.0]])
    scales = torch.tensor([[0.4] * 3, [2.0] * 3])
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(2, 1)
    opacities = torch.tensor([0.99, 0.9])
    K = torch.tensor([[20.0, 0, 16], [0, 20.0, 16], [0, 0, 1]])
    geometry = dict(means=means, quats=quats, scales=scales, opacities=opacities, viewmats=torch.eye(4)[None],
                    Ks=K[None], width=32, height=32)
    return geometry


def test_a_gaussian_behind_another_gets_weight_only_where_it_is_visible():
    geometry = two_gaussians_one_behind_the_other()

    def render(values):
        return rasterize(colors=values, **geometry)[0][0]

    # Label 0 on A's centre, 1 on a ring around it where A has faded, the rest IGNORE.
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    radius = ((xx - 15.5) ** 2 + (yy - 15.5) ** 2).sqrt()
    labels = torch.full((32, 32), IGNORE)
    labels[radius < 2] = 0
    labels[(radius > 12) & (radius < 15)] = 1
    weights = rendered_weights(render, 2, one_hot_labels(labels, 2))
    # By definition: the weight a Gaussian puts on label l is the sum of its alpha * T over those pixels.
    alpha = rasterize(colors=torch.eye(2), **geometry)[0][0]  # channel i = weight of Gaussian i per pixel
    for label in (0, 1):
        torch.testing.assert_close(weights[:, label], alpha[labels == label].sum(0), rtol=1e-5, atol=1e-6)
    # In the centre A hides B (B keeps only the transmittance left); on the ring only B is seen.
    assert weights[0, 0] > 5 * weights[1, 0]
    assert weights[1, 1] > 20 * weights[0, 1]
    assert weights[1, 1] > 0 and weights[0, 1] >= 0


def test_unmasked_gaussians_and_unseen_ones_belong_to_nothing():
    # Columns: candidates 0, 1 and "unmasked".
    weights = torch.tensor([
        [5.0, 1.0, 2.0],   # mostly on candidate 0
        [0.5, 0.2, 3.0],   # mostly on unmasked pixels: nothing
        [0.0, 0.0, 0.0],   # never seen: nothing
        [1.0, 4.0, 4.5],   # unmasked wins narrowly
        [1e-5, 0.0, 0.0],  # seen, but hardly
    ])
    votes = tally_votes(weights)
    assert votes.labels.tolist() == [0, -1, -1, -1, -1]
    torch.testing.assert_close(votes.share[0], torch.tensor(5.0 / 8.0))
    assert (votes.share[1:] == 0).all()
    # A background bias below 1 gives the object the benefit of the doubt.
    assert tally_votes(weights, unmasked_bias=0.8).labels.tolist() == [0, -1, -1, 1, -1]
    assert tally_votes(torch.zeros(3, 1)).labels.tolist() == [-1, -1, -1]  # no candidates at all


def test_masks_map_to_the_candidate_of_their_mean_feature():
    centers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ids = torch.tensor([[0, 1, 1], [2, 2, 3]])
    features = torch.tensor([[[0.0, 0.0], [1.0, 0.1], [0.9, 0.0]],
                             [[0.1, 1.0], [0.0, 0.8], [1.0, 1.0]]])  # mask 3 sits between both: no vote
    labels = mask_labels(ids, features, centers, min_cos=0.9)
    assert labels.tolist() == [[2, 0, 0], [1, 1, IGNORE]]
    assert (mask_labels(ids, features, torch.zeros(0, 2), 0.9) == torch.tensor([[0, IGNORE, IGNORE],
                                                                              [IGNORE, IGNORE, IGNORE]])).all()
    present, local = compact(labels)
    assert present.tolist() == [0, 1, 2] and local.tolist() == [[2, 0, 0], [1, 1, IGNORE]]


def test_gaps_next_to_masks_cast_no_vote_with_a_border():
    centers = torch.tensor([[1.0, 0.0]])
    ids = torch.zeros(1, 7, dtype=torch.long)
    ids[0, 3] = 1  # a thin part: one masked pixel, its eroded neighbours unmasked
    features = torch.tensor([[1.0, 0.0]]).expand(1, 7, 2)
    assert mask_labels(ids, features, centers, 0.9).tolist() == [[1, 1, 1, 0, 1, 1, 1]]
    assert mask_labels(ids, features, centers, 0.9, border_px=2).tolist() == [[1, IGNORE, IGNORE, 0, IGNORE, IGNORE, 1]]
    # A view without masks has no border: all of it is unmasked.
    assert mask_labels(torch.zeros(1, 3, dtype=torch.long), features[:, :3], centers, 0.9, border_px=2).tolist() == [[1, 1, 1]]


def test_votes_over_views_add_up_per_level():
    """Two 2x2 views of four Gaussians, one per pixel: each Gaussian takes the candidate of the masks
    it lies in, summed over both views, at each level apart (the fine level splits what coarse merges)."""
    coarse_dim = 1
    features = torch.tensor([[[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]], [[-1.0, 1.0, 0.0], [-1.0, 1.0, 0.0]]])
    centers = {"coarse": torch.tensor([[1.0], [-1.0]]),
               "fine": torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0], [-1.0, 1.0, 0.0]])}

    def render(values):  # Gaussian i covers pixel i alone, fully opaque
        return values.reshape(2, 2, -1)

    coarse = torch.tensor([[1, 1], [2, 2]])
    fine = torch.tensor([[1, 2], [3, 3]])
    second_view_fine = torch.tensor([[1, 2], [0, 3]])  # Gaussian 2 unmasked once, masked once
    views = [(render, features, {"coarse": coarse, "fine": fine}),
             (render, features, {"coarse": coarse, "fine": second_view_fine})]
    means = torch.arange(4.0)[:, None].repeat(1, 3)
    config = VoteConfig(border_px=0, unmasked_bias=0.7, other_level_covers=False)
    votes = cast_votes(views, means, centers, coarse_dim, config)
    assert votes["coarse"].labels.tolist() == [0, 0, 1, 1]
    assert votes["fine"].labels.tolist() == [0, 1, 2, 2]
    assert votes["fine"].share.tolist() == [1.0, 1.0, 0.5, 1.0]
    assert votes["coarse"].share.tolist() == [1.0, 1.0, 1.0, 1.0]
    # The coarse mask covers Gaussian 2 where the fine level has no mask: a part without a mask of its own,
    # no evidence of background, so that view casts no fine vote there.
    covered = cast_votes(views, means, centers, coarse_dim, VoteConfig(border_px=0, unmasked_bias=0.7))
    assert covered["fine"].labels.tolist() == [0, 1, 2, 2] and covered["fine"].share.tolist() == [1.0] * 4


def test_a_part_half_the_views_miss_keeps_its_gaussians():
    """A thin part (Gaussians 0-3 in a row) whose fine mask half the views miss, the object's coarse mask
    covering it in all: with the other level covering it and neighbours smoothing the votes, it keeps its
    label; counting the misses as background loses it where unmasked weight dominates."""
    centers = {"coarse": torch.tensor([[1.0]]), "fine": torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]])}
    features = torch.tensor([[1.0, 1.0, 0.0]] * 4 + [[1.0, 0.0, 1.0]] * 4).reshape(2, 4, 3)

    def render(values):  # 8 Gaussians, one per pixel: row 0 the thin part, row 1 the object's body
        return values.reshape(2, 4, -1)

    coarse = torch.ones(2, 4, dtype=torch.long)
    hit, miss = torch.tensor([[1, 1, 1, 1], [2, 2, 2, 2]]), torch.tensor([[0, 0, 0, 0], [2, 2, 2, 2]])
    partial = torch.tensor([[1, 0, 0, 1], [2, 2, 2, 2]])  # misses the middle of the part
    views = [(render, features, {"coarse": coarse, "fine": f}) for f in (hit, miss, miss, partial, miss, hit)]
    means = torch.tensor([[x, y, 0.0] for y in (0.0, 10.0) for x in range(4)])
    naive = cast_votes(views, means, centers, 1, VoteConfig(border_px=0, other_level_covers=False, unmasked_bias=1.0))
    assert naive["fine"].labels[:4].tolist() == [-1, -1, -1, -1]  # 3 or 4 of 6 views said "nothing here"
    kept = cast_votes(views, means, centers, 1, VoteConfig(border_px=0, unmasked_bias=1.0))
    assert kept["fine"].labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def test_neighbours_smooth_a_gaussian_outvoted_by_one_view():
    """A row of Gaussians of one part, one of which a bad view gave to the neighbouring part: smoothing over its
    nearest neighbours gives it back, and the part's border (far from it) stays where it was."""
    from splatseg_ns.core.segment.losses import knn_indices
    from splatseg_ns.core.segment.neighbourhood import smooth_votes

    weights = torch.zeros(10, 3)
    weights[:5, 0], weights[5:, 1] = 1.0, 1.0  # part 0: Gaussians 0-4; part 1: 5-9
    weights[2] = torch.tensor([0.4, 0.6, 0.0])  # one Gaussian outvoted
    means = torch.arange(10.0)[:, None] * torch.tensor([[1.0, 0.0, 0.0]])
    neighbours = knn_indices(means, 2)
    assert sorted(neighbours[2].tolist()) == [1, 3] and sorted(neighbours[0].tolist()) == [1, 2]
    smoothed = smooth_votes(weights, neighbours, rounds=2, strength=0.5)
    assert smoothed.argmax(dim=1).tolist() == [0] * 5 + [1] * 5
    assert torch.allclose(smoothed.sum(dim=1), weights.sum(dim=1))  # each Gaussian keeps its own total
    assert torch.equal(smooth_votes(weights, neighbours, rounds=0, strength=0.5), weights)
    unseen = weights.clone()
    unseen[7] = 0.0
    assert smooth_votes(unseen, neighbours, 2, 0.5)[7].sum() == 0  # never seen: stays unseen
    nan = means.clone()
    nan[4] = float("nan")
    assert knn_indices(nan, 2)[4].tolist() == [4, 4] and 4 not in knn_indices(nan, 2)[:4].flatten().tolist()


def test_no_views_leave_every_gaussian_unlabelled():
    centers = {"coarse": torch.zeros(2, 1), "fine": torch.zeros(3, 3)}
    votes = cast_votes([], torch.zeros(5, 3), centers, 1, VoteConfig())
    assert votes["fine"].labels.tolist() == [-1] * 5


def test_a_mask_over_two_candidates_is_cut_by_what_its_pixels_render_as():
    """One mask over a mug (candidate 0, 6 px) and its table (candidate 1, 10 px), as a merge with the
    touching neighbour gives: cut, each piece votes for its own candidate; a 1-px piece (feature noise at the
    border) stays with its mask."""
    from splatseg_ns.core.segment.lifting import mask_labels, nearest_candidates

    centers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]] * 10).reshape(4, 4, 2)
    ids = torch.ones(4, 4, dtype=torch.long)
    owners = nearest_candidates(features, centers, 0.8)
    assert owners.reshape(-1).tolist() == [0] * 6 + [1] * 10
    whole = mask_labels(ids, features, centers, 0.0)
    assert whole.unique().tolist() == [1]  # the merged mask's mean is nearest the table
    cut = mask_labels(ids, features, centers, 0.8, cut_by=owners, min_piece=0.2)
    assert torch.equal(cut, owners)
    noisy = features.clone()
    noisy[3, 3] = torch.tensor([1.0, 0.0])  # one table pixel renders as the mug
    table = (owners == 1).long()  # a mask of the table alone (10 px)
    kept = mask_labels(table, noisy, centers, 0.8, cut_by=nearest_candidates(noisy, centers, 0.8), min_piece=0.2)
    assert (kept[table.bool()] == 1).all()  # 1 of 10 px is no piece of its own
