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
    config = VoteConfig(border_px=0, unmasked_bias=0.7)
    votes = cast_votes(views, 4, centers, coarse_dim, config)
    assert votes["coarse"].labels.tolist() == [0, 0, 1, 1]
    assert votes["fine"].labels.tolist() == [0, 1, 2, 2]
    assert votes["fine"].share.tolist() == [1.0, 1.0, 0.5, 1.0]
    assert votes["coarse"].share.tolist() == [1.0, 1.0, 1.0, 1.0]


def test_no_views_leave_every_gaussian_unlabelled():
    centers = {"coarse": torch.zeros(2, 1), "fine": torch.zeros(3, 3)}
    votes = cast_votes([], 5, centers, 1, VoteConfig())
    assert votes["fine"].labels.tolist() == [-1] * 5
