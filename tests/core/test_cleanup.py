"""clean_selection: planted floaters and weak members go, the object's bulk stays."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from splatseg_ns.core.export.cleanup import clean_selection


def object_with_floaters(seed: int = 0):
    """A dense sphere shell (the object) + scattered single floaters + one small far cluster,
    inside a scene of unselected Gaussians."""
    rng = np.random.default_rng(seed)
    shell = rng.normal(size=(5000, 3))
    shell = shell / np.linalg.norm(shell, axis=1, keepdims=True) * rng.uniform(0.9, 1.0, (5000, 1))
    singles = rng.uniform(-6, 6, size=(30, 3))
    singles = singles[np.linalg.norm(singles, axis=1) > 2.5]
    far_cluster = np.array([4.0, 4.0, 0.0]) + 0.05 * rng.normal(size=(40, 3))
    scene = rng.uniform(-10, 10, size=(3000, 3))
    means = np.concatenate([shell, singles, far_cluster, scene])
    kind = np.repeat([0, 1, 2, 3], [len(shell), len(singles), len(far_cluster), len(scene)])
    return means, kind


def test_removes_planted_floaters_and_keeps_the_bulk():
    means, kind = object_with_floaters()
    selected = kind < 3
    kept = clean_selection(means, selected).keep
    assert not kept[kind == 3].any(), "never adds unselected Gaussians"
    assert not kept[kind == 1].any(), "isolated floaters removed"
    assert not kept[kind == 2].any(), "small far cluster removed"
    assert kept[kind == 0].mean() > 0.99, "the object's bulk stays"


def test_each_geometric_filter_alone():
    means, kind = object_with_floaters()
    selected = kind < 3
    sor_only = clean_selection(means, selected, radius_factor=None).keep
    assert not sor_only[kind == 1].any() and sor_only[kind == 0].mean() > 0.99
    # A tight cluster has small kNN distances: outlier removal alone keeps it, components do not.
    assert sor_only[kind == 2].all()
    components_only = clean_selection(means, selected, std_ratio=None).keep
    assert not components_only[kind == 2].any() and not components_only[kind == 1].any()
    assert components_only[kind == 0].all()
    untouched = clean_selection(means, selected, std_ratio=None, radius_factor=None).keep
    assert np.array_equal(untouched, selected)


def test_similarity_threshold():
    means, kind = object_with_floaters()
    selected = kind == 0
    similarity = np.where(np.arange(len(means)) % 10 == 0, 0.3, 0.9)
    kept = clean_selection(means, selected, similarity, min_agreement=None, std_ratio=None, radius_factor=None).keep
    assert np.array_equal(kept, selected & (similarity >= 0.5))
    stricter = clean_selection(means, selected, similarity, similarity_threshold=0.95, min_agreement=None,
                               std_ratio=None).keep
    assert not stricter.any()
    ignored = clean_selection(means, selected, similarity, similarity_threshold=None, std_ratio=None).keep
    assert ignored[selected].mean() > 0.99


def test_weak_members_stay_among_their_own_and_go_among_others():
    """A thin rod of members unsure of their label (its Gaussians share their weight with what lies behind)
    stays: its neighbours are members. The same uncertainty in a haze of members mixed into the background
    goes: most of their neighbours are not selected."""
    rng = np.random.default_rng(2)
    body = rng.normal(size=(3000, 3)) * 0.2
    rod = np.stack([np.full(300, 0.6), np.zeros(300), np.linspace(0.0, 1.5, 300)], 1) + rng.normal(size=(300, 3)) * 0.005
    haze = rng.uniform(-1.0, 1.0, size=(200, 3)) + [0.0, 0.0, -1.5]
    background = rng.uniform(-1.0, 1.0, size=(2000, 3)) + [0.0, 0.0, -1.5]
    means = np.concatenate([body, rod, haze, background])
    kind = np.repeat([0, 1, 2, 3], [3000, 300, 200, 2000])
    selected = kind < 3
    similarity = np.where(kind == 0, 0.9, 0.3)
    kept = clean_selection(means, selected, similarity, std_ratio=None, radius_factor=None)
    assert kept.keep[kind == 1].all() and kept.keep[kind == 0].all()
    assert not kept.keep[kind == 2].any() and kept.dropped["weak"] == 200
    strict = clean_selection(means, selected, similarity, min_agreement=None, std_ratio=None, radius_factor=None)
    assert not strict.keep[kind == 1].any()  # one global threshold drops the thin part too


def test_keeps_several_large_pieces():
    # A pair of shoes: two equal, separate blobs are both the object.
    rng = np.random.default_rng(1)
    means = np.concatenate([rng.normal(size=(2000, 3)) * 0.2, rng.normal(size=(2000, 3)) * 0.2 + [3, 0, 0]])
    kept = clean_selection(means, np.ones(len(means), bool)).keep
    # Both pieces stay; only the sparse tails of the normal distributions (~2%) are trimmed.
    assert kept[:2000].mean() > 0.95 and kept[2000:].mean() > 0.95


def test_small_and_degenerate_inputs():
    means = np.zeros((5, 3))
    assert clean_selection(means, np.ones(5, bool)).keep.all()
    assert not clean_selection(means, np.zeros(5, bool)).keep.any()
    # Many duplicated positions must not collapse the radius to zero and split everything.
    rng = np.random.default_rng(2)
    dup = np.concatenate([np.zeros((600, 3)), rng.normal(size=(400, 3)) * 0.1])
    assert clean_selection(dup, np.ones(1000, bool)).keep.mean() > 0.95
    # NaN positions are never kept; torch input works.
    nan = torch.from_numpy(rng.normal(size=(100, 3)))
    nan[3] = float("nan")
    kept = clean_selection(nan, torch.ones(100, dtype=torch.bool)).keep
    assert not kept[3] and kept.dtype == bool


@pytest.mark.parametrize("num_selected", [100_000])
def test_speed_on_a_large_selection(num_selected):
    """Timing only (printed): 1M Gaussians, 100k selected."""
    rng = np.random.default_rng(0)
    means = rng.uniform(-1, 1, size=(1_000_000, 3)).astype(np.float32)
    selected = np.zeros(len(means), bool)
    selected[rng.choice(len(means), num_selected, replace=False)] = True
    similarity = rng.uniform(0.4, 1.0, len(means)).astype(np.float32)
    t0 = time.perf_counter()
    kept = clean_selection(means, selected, similarity).keep
    print(f"\nclean_selection: 1M Gaussians, {num_selected} selected, {time.perf_counter() - t0:.2f} s")
    assert kept.sum() <= selected.sum()


def test_an_object_of_uneven_density_stays_whole():
    """Real splats are dense where the texture is and sparse elsewhere: the sparse part is still object,
    not floaters (a 4x median-distance cut broke the demo's and the fox's objects into pieces)."""
    rng = np.random.default_rng(2)
    dense = rng.uniform([0, 0, 0], [1, 1, 0.05], size=(6000, 3))
    sparse = rng.uniform([1, 0, 0], [2, 1, 0.05], size=(300, 3))  # same surface, 20x fewer Gaussians
    means = np.concatenate([dense, sparse])
    kept = clean_selection(means, np.ones(len(means), bool), std_ratio=None).keep
    assert kept[len(dense):].mean() > 0.95, kept[len(dense):].mean()  # 0.12 with the former 4x cut
