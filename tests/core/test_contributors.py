"""A pixel's contributors computed alone equal the weights a full render blends there; a click through a floater."""

from __future__ import annotations

import pytest
import torch

from splatseg_ns.core.render.contributors import GaussianGrid, click_candidate, pixel_contributors
from splatseg_ns.core.render.rasterize import rasterize
from splatseg_ns.core.segment.lifting import one_hot_labels, rendered_weights
from tests.helpers import make_scene


def full_render_weights(scene, rasterize_mode="classic"):
    """[N, H * W]: every Gaussian's weight at every pixel, from the full render (one label per pixel)."""
    W, H = scene["width"], scene["height"]
    geometry = {k: scene[k] for k in ("means", "quats", "scales", "opacities", "viewmats", "Ks", "width", "height")}

    def render(values):
        return rasterize(colors=values, rasterize_mode=rasterize_mode, **geometry)[0][0]

    labels = torch.arange(H * W).reshape(H, W)
    target = one_hot_labels(labels, H * W)
    return rendered_weights(render, scene["means"].shape[0], target, dtype=scene["means"].dtype)


@pytest.mark.parametrize("rasterize_mode,with_grid", [("classic", False), ("antialiased", False), ("classic", True),
                                                     ("antialiased", True)])
def test_contributors_equal_the_full_render_at_every_pixel(rasterize_mode, with_grid):
    scene = make_scene(300, 32, 24, seed=3)  # behind the camera, off-screen, opaque walls, huge ones
    weights = full_render_weights(scene, rasterize_mode)
    W, H = scene["width"], scene["height"]
    grid = GaussianGrid.build(scene["means"], scene["scales"].amax(-1), per_cell=4) if with_grid else None
    checked = 0
    for row in range(H):
        for column in range(W):
            found = pixel_contributors(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                                       scene["viewmats"][0], scene["Ks"][0], W, H, column, row,
                                       rasterize_mode=rasterize_mode, grid=grid)
            expected = weights[:, row * W + column]
            dense = torch.zeros_like(expected)
            dense[found.ids] = found.weights
            torch.testing.assert_close(dense, expected, atol=1e-10, rtol=1e-9)
            assert (expected[found.ids] > 0).all()  # every contributor listed really contributes
            checked += int(found.ids.numel() > 0)
    assert checked > 0.5 * W * H


def test_the_grid_visits_few_gaussians_for_a_pixel():
    g = torch.Generator().manual_seed(0)
    means = torch.rand(20000, 3, generator=g) * 2 + torch.tensor([-1.0, -1.0, 2.0])
    scales = torch.full((20000, 3), 0.01)
    grid = GaussianGrid.build(means, scales.amax(-1))
    assert grid.counts.sum() == 20000 and torch.equal(torch.sort(grid.order).values, torch.arange(20000))
    ray = torch.tensor([0.0, 0.0, 1.0])
    slots = grid.candidates(torch.eye(4), ray, 1 / 64, (1.2, 1.2), 0.01)
    assert 0 < slots.numel() < 0.25 * 20000
    near = grid.order[slots]
    assert torch.equal(grid.means[:, slots], means[near].T)  # the grid's copy, in cell order
    # every Gaussian within reach of the ray is among them
    within = ((means[:, :2].norm(dim=-1)) < 0.05).nonzero().squeeze(-1)
    assert torch.isin(within, near).all()


@pytest.mark.parametrize("with_grid", [False, True])
def test_a_pixel_deeper_than_one_chunk_matches_the_render(with_grid):
    # 1200 faint Gaussians along one ray (more than several chunks hold before the pixel turns opaque),
    # in pairs of clones at equal depth, so that ties fall on chunk boundaries too.
    g = torch.Generator().manual_seed(7)
    n = 1200
    z = (2.0 + 3.0 * torch.rand(n // 2, generator=g, dtype=torch.float64)).repeat_interleave(2)
    means = torch.stack([0.01 * torch.randn(n, generator=g, dtype=torch.float64),
                         0.01 * torch.randn(n, generator=g, dtype=torch.float64), z], -1)
    means[1::2, :2] = means[0::2, :2]
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    scales = 0.05 + 0.05 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    opacities = torch.full((n,), 0.03, dtype=torch.float64)
    K = torch.tensor([[20.0, 0, 4], [0, 20.0, 4], [0, 0, 1]], dtype=torch.float64)
    scene = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "viewmats": torch.eye(4, dtype=torch.float64)[None],
             "Ks": K[None], "width": 8, "height": 8}
    expected = full_render_weights(scene)[:, 4 * 8 + 4]
    grid = GaussianGrid.build(means, scales.amax(-1), per_cell=8) if with_grid else None
    found = pixel_contributors(means, quats, scales, opacities, torch.eye(4, dtype=torch.float64), K, 8, 8, 4, 4, grid=grid)
    assert 256 < found.ids.numel() < n  # past the first chunk, and stopped before the last Gaussian
    torch.testing.assert_close(torch.zeros(n, dtype=torch.float64).index_put_((found.ids,), found.weights), expected)


def test_contributors_are_front_to_back_and_stop_where_the_render_does():
    scene = make_scene(300, 32, 24, seed=5)
    W, H = scene["width"], scene["height"]
    depth = torch.addmm(scene["viewmats"][0, :3, 3], scene["means"], scene["viewmats"][0, :3, :3].T)[:, 2]
    opaque_pixels = 0
    for row in range(0, H, 3):
        for column in range(0, W, 3):
            found = pixel_contributors(scene["means"], scene["quats"], scene["scales"], scene["opacities"],
                                       scene["viewmats"][0], scene["Ks"][0], W, H, column, row)
            assert (depth[found.ids][1:] >= depth[found.ids][:-1]).all()
            assert found.opacity <= 1.0
            opaque_pixels += found.opacity > 0.999
    assert opaque_pixels > 0  # the walls make some pixels opaque: the stop rule was exercised


def test_a_click_through_a_floater_picks_the_object_behind_it():
    # An opaque object (candidate 2) behind a half-transparent floater that belongs to nothing (-1),
    # and a faint Gaussian of candidate 0 in front of both.
    means = torch.tensor([[0.0, 0.0, 1.5], [0.0, 0.0, 2.0], [0.0, 0.0, 4.0], [0.02, 0.0, 4.1]])
    scales = torch.tensor([[0.05] * 3, [0.2] * 3, [0.5] * 3, [0.5] * 3])
    quats = torch.tensor([[1.0, 0, 0, 0]]).repeat(4, 1)
    opacities = torch.tensor([0.1, 0.7, 0.99, 0.99])
    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]])
    found = pixel_contributors(means, quats, scales, opacities, torch.eye(4), K, 32, 32, 16, 16)
    assert found.ids.tolist()[:2] == [0, 1] and 2 in found.ids.tolist()
    assignment = torch.tensor([0, -1, 2, 2])
    candidate, weight = click_candidate(found, assignment, 3)
    assert candidate == 2 and weight > found.weights[0]
    # The floater carries the most weight of any single Gaussian: counted, it would win.
    assert int(found.ids[found.weights.argmax()]) == 1
    assert click_candidate(found, torch.tensor([0, 1, 2, 2]), 3)[0] == 1
    assert click_candidate(found, torch.full((4,), -1), 3) == (-1, 0.0)
    features = torch.eye(4)
    torch.testing.assert_close(found.blend(features), torch.zeros(4).index_put_((found.ids,), found.weights))
