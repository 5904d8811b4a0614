"""Selection by clicks, similarity and text, on synthetic features with known answers."""

from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

from splatseg_ns.core.features import level_features
from splatseg_ns.core.segment.losses import NonFiniteFeaturesError
from splatseg_ns.core.segment.segmentation import segment_everything_by_clustering
from splatseg_ns.core.segment.selection import (
    ClickIndex,
    precompute_assignment,
    precompute_click_index,
    rank_candidates_by_text,
    select_by_similarity,
    select_by_text,
    select_candidates,
    select_prompts,
)
from tests.helpers import features_with_nan


def select_by_clicks(assignment, similarity, centers, positive, negative=None, threshold=None, features=None):
    """The click rule on a precomputed assignment: `ClickIndex.from_assignment(...).select`."""
    index = ClickIndex.from_assignment(assignment, similarity, centers)
    return index.select(positive, negative, threshold, features=features)


def nearest_candidates(clicks: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Each click's candidate (argmax cosine), -1 without candidates: what a click picks."""
    if centers.shape[0] == 0:
        return torch.full((clicks.shape[0],), -1, dtype=torch.long)
    return (F.normalize(clicks, dim=-1) @ F.normalize(centers, dim=-1).T).argmax(-1)


def blobs(centers: torch.Tensor, per_center: int, noise: float, seed: int = 0):
    """Features drawn around unit `centers`; returns (features [K*per, D], truth [K*per])."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.arange(centers.shape[0]).repeat_interleave(per_center)
    features = centers[truth] + noise * torch.randn(truth.numel(), centers.shape[1], generator=g)
    return features, truth


def orthogonal_centers(k: int, dim: int, seed: int = 0) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))
    return q[:k]


def two_level_scene(seed: int = 0):
    """3 objects x 2 parts each; coarse = F[:, :12] names the object, fine = F names the part."""
    coarse = orthogonal_centers(3, 12, seed)
    rest = orthogonal_centers(2, 12, seed + 1)
    per_part = 200
    obj = torch.arange(3).repeat_interleave(2 * per_part)
    part = torch.arange(6).repeat_interleave(per_part)
    g = torch.Generator().manual_seed(seed)
    features = torch.cat([coarse[obj], rest[part % 2]], dim=1) + 0.05 * torch.randn(obj.numel(), 24, generator=g)
    fine_centers = F.normalize(torch.cat([coarse[torch.arange(6) // 2], rest[torch.arange(6) % 2]], 1), dim=-1)
    return features, obj, part, coarse, fine_centers


def _reference_select(assignment, similarity, centers, positive, negative, threshold, features):
    """select_by_clicks spelled out one Gaussian and one click at a time (float64 cosines)."""
    k = centers.shape[0]
    unit = F.normalize(centers.double(), dim=-1)

    def candidate(click):
        return int((F.normalize(click.double(), dim=0) @ unit.T).argmax()) if k else -1

    pos_ids = [candidate(c) for c in positive]
    neg_ids = [candidate(c) for c in negative]
    out = torch.zeros(assignment.shape[0], dtype=torch.bool)
    for i, a in enumerate(assignment.tolist()):
        if a < 0 or a not in pos_ids or (threshold is not None and not similarity[i] >= threshold):
            continue
        if a not in neg_ids:
            out[i] = True
        elif features is not None:  # conflicted: split by the clicks on this candidate only
            f = F.normalize(features[i].double(), dim=0)
            best_pos = max(float(f @ F.normalize(c.double(), dim=0)) for c, j in zip(positive, pos_ids) if j == a)
            best_neg = max(float(f @ F.normalize(c.double(), dim=0)) for c, j in zip(negative, neg_ids) if j == a)
            out[i] = best_pos > best_neg and best_pos > -1.0
    return out


@pytest.mark.parametrize("chunk_size", [7, 1 << 18])
def test_precompute_assignment_matches_dense_argmax(chunk_size):
    centers = F.normalize(torch.randn(9, 24), dim=-1)
    features = torch.randn(1000, 24)
    assignment, similarity = precompute_assignment(features, centers, chunk_size=chunk_size)
    dense = F.normalize(features, dim=-1) @ centers.T
    assert torch.equal(assignment, dense.argmax(-1))
    torch.testing.assert_close(similarity, dense.amax(-1), atol=1e-6, rtol=0)


def test_no_candidates():
    assignment, similarity = precompute_assignment(torch.randn(10, 12), torch.zeros(0, 12))
    assert (assignment == -1).all() and (similarity == -1).all()
    assert not select_by_clicks(assignment, similarity, torch.zeros(0, 12), torch.randn(2, 12)).any()
    assert (nearest_candidates(torch.randn(3, 12), torch.zeros(0, 12)) == -1).all()


def test_click_selects_exactly_its_blob():
    centers = orthogonal_centers(5, 24)
    features, truth = blobs(centers, 300, noise=0.1)
    assignment, similarity = precompute_assignment(features, centers)
    click = centers[2] + 0.05 * torch.randn(24)
    selected = select_by_clicks(assignment, similarity, centers, click[None])
    assert torch.equal(selected, truth == 2)
    two = select_by_clicks(assignment, similarity, centers, torch.stack([centers[1], centers[4]]))
    assert torch.equal(two, (truth == 1) | (truth == 4))


def test_negative_clicks_subtract_and_win_conflicts():
    centers = orthogonal_centers(4, 24)
    features, truth = blobs(centers, 100, noise=0.1)
    assignment, similarity = precompute_assignment(features, centers)
    positives = torch.stack([centers[0], centers[1]])
    only_zero = select_by_clicks(assignment, similarity, centers, positives, centers[1][None])
    assert torch.equal(only_zero, truth == 0)
    # A negative click on a candidate no positive picked changes nothing.
    unchanged = select_by_clicks(assignment, similarity, centers, positives, centers[3][None])
    assert torch.equal(unchanged, (truth == 0) | (truth == 1))
    # Negative on the same candidate as the only positive: the negative wins, nothing is left.
    assert not select_by_clicks(assignment, similarity, centers, centers[0][None], centers[0][None]).any()
    # The conflicted candidate (1) is dropped whole even with features: the clicks on it tie exactly.
    split = select_by_clicks(assignment, similarity, centers, positives, centers[1][None], features=features)
    assert torch.equal(split, truth == 0)


def test_coarse_conflict_drops_object_fine_level_resolves_it():
    # Positive on part 0 and negative on part 1 of object 0: one coarse candidate, two fine ones.
    features, obj, part, coarse_centers, fine_centers = two_level_scene()
    pos, neg = features[part == 0][:1], features[part == 1][:1]
    a_c, s_c = precompute_assignment(level_features(features, "coarse"), coarse_centers)
    assert not select_by_clicks(a_c, s_c, coarse_centers, pos[:, :12], neg[:, :12]).any()
    a_f, s_f = precompute_assignment(features, fine_centers)
    assert torch.equal(select_by_clicks(a_f, s_f, fine_centers, pos, neg), part == 0)


def test_click_features_must_match_the_level():
    centers = orthogonal_centers(3, 12)
    assignment, similarity = precompute_assignment(torch.randn(10, 12), centers)
    with pytest.raises(ValueError, match="24"):
        select_by_clicks(assignment, similarity, centers, torch.randn(1, 24))


def test_conflict_split_when_features_are_given():
    basis = orthogonal_centers(4, 24)
    centers, direction = basis[:3], basis[3]
    features, truth = blobs(centers, 200, noise=0.05)
    # Candidate 0 holds two halves that differ along `direction`; clicks on each half conflict.
    half = torch.zeros(features.shape[0], dtype=torch.bool)
    half[0:200:2] = True
    features[half] += 0.3 * direction
    features[(truth == 0) & ~half] -= 0.3 * direction
    assignment, similarity = precompute_assignment(features, centers)
    assert torch.equal(assignment, truth)
    pos = F.normalize(centers[0] + 0.3 * direction, dim=-1)[None]
    neg = F.normalize(centers[0] - 0.3 * direction, dim=-1)[None]
    assert not select_by_clicks(assignment, similarity, centers, pos, neg).any()
    split = select_by_clicks(assignment, similarity, centers, pos, neg, features=features)
    assert torch.equal(split, half)
    # Other positive candidates are still selected whole beside the split one.
    both = select_by_clicks(assignment, similarity, centers, torch.cat([pos, centers[2:3]]), neg, features=features)
    assert torch.equal(both, half | (truth == 2))


@pytest.mark.parametrize("seed", range(40))
def test_click_index_matches_reference_on_random_data(seed):
    g = torch.Generator().manual_seed(seed)
    k = [0, 1, 2, 5, 9][seed % 5]
    n, dim = int(torch.randint(0, 300, (1,), generator=g)), 6
    centers = torch.randn(k, dim, generator=g) * torch.rand(k, 1, generator=g).add(0.5)  # not unit
    features = torch.randn(n, dim, generator=g)
    if k:
        # Clicks near candidates, so positives and negatives often land on the same one.
        clicks = centers[torch.randint(0, k, (12,), generator=g)] + 0.6 * torch.randn(12, dim, generator=g)
    else:
        clicks = torch.randn(12, dim, generator=g)
    num_pos, num_neg = int(torch.randint(0, 5, (1,), generator=g)), int(torch.randint(0, 5, (1,), generator=g))
    positive, negative = clicks[:num_pos], clicks[6 : 6 + num_neg]
    if seed % 3 == 0 and num_pos and num_neg:
        negative = torch.cat([negative, positive[:1]])  # the same pixel clicked both ways
    assignment, similarity = precompute_assignment(features, centers)
    # Unassigned Gaussians and ids outside [0, K) as a hand-made assignment may hold.
    unassigned = torch.rand(n, generator=g) < 0.15
    assignment = torch.where(unassigned, torch.full_like(assignment, -1), assignment)
    similarity = torch.where(unassigned, torch.full_like(similarity, -1.0), similarity)
    index = ClickIndex.from_assignment(assignment, similarity, centers)
    for threshold in (None, 0.3):
        for with_features in (False, True):
            f = features if with_features else None
            expected = _reference_select(assignment, similarity, centers, positive, negative, threshold, f)
            got = index.select(positive, negative if num_neg or seed % 3 == 0 else None, threshold, features=f)
            assert torch.equal(got, expected), (seed, threshold, with_features)
            legacy = select_by_clicks(assignment, similarity, centers, positive, negative, threshold, features=f)
            assert torch.equal(legacy, expected)


def test_click_index_from_assignment_equals_precompute():
    centers = orthogonal_centers(5, 24)
    features, truth = blobs(centers, 100, noise=0.1)
    index = precompute_click_index(features, centers)
    assignment, similarity = precompute_assignment(features, centers)
    assert torch.equal(index.assignment, assignment) and torch.equal(index.similarity, similarity)
    assert index.num_candidates == 5 and torch.equal(index.slots, assignment)
    torch.testing.assert_close(index.unit_centers.norm(dim=-1), torch.ones(5))
    pos, neg = torch.stack([centers[1], centers[3]]), centers[3][None]
    assert torch.equal(index.select(pos, neg), select_by_clicks(assignment, similarity, centers, pos, neg))
    assert torch.equal(index.select(pos, neg), truth == 1)
    assert not index.select(torch.zeros(0, 24)).any()
    with pytest.raises(ValueError, match="12"):
        index.select(torch.randn(1, 12))
    no_similarity = ClickIndex.from_assignment(assignment, None, centers)
    assert torch.equal(no_similarity.select(pos), (truth == 1) | (truth == 3))
    with pytest.raises(ValueError):
        no_similarity.select(pos, threshold=0.5)
    # Unassigned (-1) and out-of-range ids go to the always-False slot K.
    odd = ClickIndex.from_assignment(torch.tensor([0, -1, 4, 7, 2]), None, centers[:3])
    assert odd.slots.tolist() == [0, 3, 3, 3, 2]
    assert odd.select(centers[:3]).tolist() == [True, False, False, False, True]


@pytest.mark.parametrize("with_features", [False, True])
def test_same_pixel_positive_then_negative_removes_its_candidate(with_features):
    centers = orthogonal_centers(4, 24)
    features, truth = blobs(centers, 150, noise=0.15)
    assignment, similarity = precompute_assignment(features, centers)
    index = ClickIndex.from_assignment(assignment, similarity, centers)
    f = features if with_features else None
    pixel = features[truth == 2][7][None]  # the rendered feature at the clicked pixel
    other = centers[0][None]
    assert torch.equal(index.select(pixel, features=f), truth == 2)
    # Clicked positive, then the same pixel negative: the candidate is gone, the other click stays.
    assert not index.select(pixel, pixel, features=f).any()
    assert torch.equal(index.select(torch.cat([pixel, other]), pixel, features=f), truth == 0)
    assert torch.equal(select_by_clicks(assignment, similarity, centers, torch.cat([pixel, other]), pixel,
                                        features=f), truth == 0)  # fmt: skip
    # A second positive on that candidate (its centre): without features the negative still drops the
    # whole candidate; with them the candidate is split between that positive and the negative pixel.
    split = index.select(torch.cat([pixel, centers[2][None]]), pixel, features=f)
    if with_features:
        f_unit = F.normalize(features, dim=-1)
        closer = (f_unit @ F.normalize(centers[2], dim=0)) > (f_unit @ F.normalize(pixel[0], dim=0))
        assert torch.equal(split, (truth == 2) & closer) and 0 < int(split.sum()) < int((truth == 2).sum())
    else:
        assert not split.any()


def test_threshold_keeps_only_confident_members():
    centers = orthogonal_centers(3, 24)
    features, truth = blobs(centers, 500, noise=0.25)
    assignment, similarity = precompute_assignment(features, centers)
    threshold = float(similarity[truth == 0].median())
    selected = select_by_clicks(assignment, similarity, centers, centers[0][None], threshold=threshold)
    assert torch.equal(selected, (assignment == 0) & (similarity >= threshold))
    assert 0 < int(selected.sum()) < int((truth == 0).sum())


def test_coarse_selects_object_fine_selects_part():
    features, obj, part, coarse_centers, fine_centers = two_level_scene()
    click = features[part == 3][0]  # object 1, part 1
    a_c, s_c = precompute_assignment(level_features(features, "coarse"), coarse_centers)
    coarse_sel = select_by_clicks(a_c, s_c, coarse_centers, level_features(click[None], "coarse"))
    assert torch.equal(coarse_sel, obj == 1)
    a_f, s_f = precompute_assignment(level_features(features, "fine"), fine_centers)
    fine_sel = select_by_clicks(a_f, s_f, fine_centers, level_features(click[None], "fine"))
    assert torch.equal(fine_sel, part == 3)


def test_select_candidates_ignores_invalid_ids_and_unassigned():
    assignment = torch.tensor([0, 1, 2, -1, 1])
    selected = select_candidates(assignment, torch.tensor([1, -1, 7]), 3)
    assert selected.tolist() == [False, True, False, False, True]
    assert not select_candidates(assignment, torch.tensor([], dtype=torch.long), 3).any()
    with pytest.raises(ValueError):
        select_candidates(assignment, torch.tensor([1]), 3, threshold=0.5)


def test_select_by_similarity():
    centers = orthogonal_centers(3, 24)
    features, truth = blobs(centers, 200, noise=0.05)
    selected = select_by_similarity(features, centers[0][None], threshold=0.8, chunk_size=77)
    assert torch.equal(selected, truth == 0)
    # A negative close to the positive keeps only the Gaussians nearer the positive.
    pos = F.normalize(centers[0] + 0.5 * centers[1], dim=-1)[None]
    neg = F.normalize(centers[0] - 0.5 * centers[1], dim=-1)[None]
    f = F.normalize(features, dim=-1)
    expected = ((f @ pos.T)[:, 0] > 0.5) & ((f @ pos.T)[:, 0] > (f @ neg.T)[:, 0])
    assert torch.equal(select_by_similarity(features, pos, neg, threshold=0.5), expected)
    assert not select_by_similarity(features, torch.zeros(0, 24)).any()


def test_text_ranking():
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    has = torch.tensor([True, True, False, True, True, True])
    emb[4] = float("nan")  # no embedding either way
    text = F.normalize(emb[3] + 0.2 * emb[1], dim=-1)
    ids, scores = rank_candidates_by_text(text, emb, has)
    assert ids[0].item() == 3 and set(ids.tolist()) == {0, 1, 3, 5}
    assert (scores[:-1] >= scores[1:]).all()
    assert select_by_text(text, emb, has).tolist() == [3]
    assert select_by_text(text, emb, has, top_k=2).tolist() == ids[:2].tolist()
    # Margin keeps the runners-up only when they score almost as well as the best.
    emb2 = emb.clone()
    emb2[5] = F.normalize(emb[3] + 0.01 * emb[0], dim=-1)
    near = select_by_text(text, emb2, has, top_k=3, margin=0.02)
    assert sorted(near.tolist()) == [3, 5]
    assert select_by_text(text, emb, torch.zeros(6, dtype=torch.bool)).numel() == 0
    assert select_by_text(text.numpy(), emb.numpy(), has.numpy()).tolist() == [3]


def test_select_prompts_combines_clicks_names_and_the_fallback():
    centers = orthogonal_centers(4, 24)
    features, truth = blobs(centers, 100, noise=0.05)
    index = precompute_click_index(features, centers)
    click = centers[0][None]
    assert torch.equal(select_prompts(index, features, click), truth == 0)
    named = torch.tensor([2, 3])
    assert torch.equal(select_prompts(index, features, click, named=named), truth != 1)
    # A negative click removes its candidate from what the name picked too.
    assert torch.equal(select_prompts(index, features, click, centers[3][None], named), (truth == 0) | (truth == 2))
    assert torch.equal(select_prompts(index, features, named=named), (truth == 2) | (truth == 3))
    assert not select_prompts(index, features).any()
    # Without candidates: raw cosine to the clicks; a name alone selects nothing.
    assert torch.equal(select_prompts(None, features, click), truth == 0)
    assert torch.equal(select_prompts(None, features, click, threshold=0.9999), torch.zeros_like(truth, dtype=torch.bool))
    assert not select_prompts(None, features, named=named).any()


def test_select_by_clicks_speed_at_1m():
    """Timing only (printed, not asserted): a click vs one `features @ v` pass at 1M Gaussians."""
    n, k = 1_000_000, 200
    g = torch.Generator().manual_seed(0)
    features = torch.randn(n, 24, generator=g)
    centers = F.normalize(torch.randn(k, 24, generator=g), dim=-1)
    t0 = time.perf_counter()
    assignment, similarity = precompute_assignment(features, centers)
    precompute_ms = 1e3 * (time.perf_counter() - t0)
    clicks, negatives = features[:3], features[3:4]

    def best_ms(fn, repeat=20):
        fn()
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return 1e3 * min(times)

    click_ms = best_ms(lambda: select_by_clicks(assignment, similarity, centers, clicks, negatives))
    thr_ms = best_ms(lambda: select_by_clicks(assignment, similarity, centers, clicks, negatives, threshold=0.5))
    v = torch.randn(24)
    matvec_ms = best_ms(lambda: features @ v)
    single_pass_ms = best_ms(lambda: assignment == 3)
    print(
        f"\n1M Gaussians, K={k}, {torch.get_num_threads()} thread(s): precompute_assignment {precompute_ms:.0f} ms; "
        f"select_by_clicks {click_ms:.2f} ms, with threshold {thr_ms:.2f} ms; "
        f"features @ v {matvec_ms:.2f} ms; assignment == id {single_pass_ms:.2f} ms"
    )
    assert torch.equal(
        select_by_clicks(assignment, similarity, centers, clicks),
        torch.isin(assignment, nearest_candidates(clicks, centers)),
    )


def test_selection_and_clustering_refuse_nan_features():
    features = features_with_nan()
    centers = torch.nn.functional.normalize(torch.randn(4, 12), dim=-1)
    with pytest.raises(NonFiniteFeaturesError, match=r"^2 of 100 Gaussians have NaN/inf segmentation features"):
        precompute_click_index(features[:, :12], centers)
    with pytest.raises(NonFiniteFeaturesError, match="feature training diverged"):
        segment_everything_by_clustering(torch.randn(100, 3), features, num_segments=2)


def test_select_clicked_takes_each_clicks_candidate_from_its_pixels_gaussians():
    """A floater of candidate 2 nearest the camera but light, behind it candidate 0's Gaussians: the click picks
    0 (most weight), and a negative click on candidate 0 elsewhere removes it again."""
    from splatseg_ns.core.render.contributors import PixelContributors
    from splatseg_ns.core.segment.selection import ClickIndex, select_clicked

    assignment = torch.tensor([2, 0, 0, 1, 1, -1])
    centers = torch.nn.functional.normalize(torch.eye(3, 12), dim=-1)
    features = centers[assignment.clamp(min=0)]
    index = ClickIndex.from_assignment(assignment, torch.ones(6), centers)
    click = PixelContributors(ids=torch.tensor([0, 1, 2]), weights=torch.tensor([0.2, 0.5, 0.3]))
    assert select_clicked(index, features, [click]).tolist() == [False, True, True, False, False, False]
    on_zero = PixelContributors(ids=torch.tensor([2, 5]), weights=torch.tensor([0.6, 0.4]))
    assert not select_clicked(index, features, [click], [on_zero]).any()
    on_one = PixelContributors(ids=torch.tensor([3]), weights=torch.tensor([0.9]))
    assert select_clicked(index, features, [click, on_one]).tolist() == [False, True, True, True, True, False]
    assert not select_clicked(index, features).any()  # nothing clicked, nothing named
