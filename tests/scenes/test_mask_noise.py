"""`corrupt_instance_map` (scenes/mask_noise.py): the mask noise the GFL benchmark trains on."""

from __future__ import annotations

import numpy as np
import pytest

from splatseg_ns.scenes import mask_noise
from splatseg_ns.scenes.mask_noise import corrupt_instance_map


def instance_map(dtype=np.uint16) -> np.ndarray:
    """64x64: background 0, four blocks and a disc (ids 3, 5, 7, 9, 12), one touching the image edge."""
    ids = np.zeros((64, 64), dtype=dtype)
    ids[4:20, 4:28] = 3
    ids[4:20, 28:40] = 5  # touches 3: a shared border
    ids[30:60, 0:14] = 7  # touches the image edge
    yy, xx = np.mgrid[:64, :64]
    ids[(yy - 44) ** 2 + (xx - 40) ** 2 < 12**2] = 9
    ids[2:14, 48:62] = 12
    return ids


def count(ids: np.ndarray) -> int:
    return int(len(np.unique(ids[ids > 0])))


def pairs(a: np.ndarray, b: np.ndarray) -> set:
    """The (a id, b id) pairs met where both maps carry a mask."""
    both = (a > 0) & (b > 0)
    return set(zip(a[both].tolist(), b[both].tolist()))


def is_refinement(fine: np.ndarray, coarse: np.ndarray) -> bool:
    """Every region of `fine` lies inside one region of `coarse` (on pixels masked in both)."""
    mapping = {}
    for f, c in pairs(fine, coarse):
        if mapping.setdefault(f, c) != c:
            return False
    return True


def rng(seed=0):
    return np.random.default_rng(seed)


def test_permutation_keeps_the_partition_and_the_unmasked_pixels():
    ids = instance_map()
    out = corrupt_instance_map(ids, rng(), merge_prob=0, split_prob=0, erode_px=0)
    assert out.shape == ids.shape and out.dtype == ids.dtype
    assert np.array_equal(out == 0, ids == 0)
    assert is_refinement(out, ids) and is_refinement(ids, out)  # a bijection of ids
    assert sorted(np.unique(out[out > 0]).tolist()) == [1, 2, 3, 4, 5]
    relabelled = [corrupt_instance_map(ids, rng(s), 0, 0, 0) for s in range(20)]
    assert any(not np.array_equal(r, relabelled[0]) for r in relabelled[1:])  # ids do move


def test_merge_reduces_the_number_of_ids_by_joining_two_whole_instances():
    ids = instance_map()
    out = corrupt_instance_map(ids, rng(1), merge_prob=1.0, split_prob=0, erode_px=0)
    assert count(out) == count(ids) - 1
    assert np.array_equal(out == 0, ids == 0)
    assert is_refinement(ids, out)  # output regions are unions of input regions
    assert np.array_equal(corrupt_instance_map(ids, rng(1), merge_prob=0.0, split_prob=0, erode_px=0) == 0, ids == 0)
    assert count(corrupt_instance_map(ids, rng(1), merge_prob=0.0, split_prob=0, erode_px=0)) == count(ids)


def test_merge_probability_is_per_view():
    ids = instance_map()
    merged = [count(corrupt_instance_map(ids, rng(s), 0.3, 0, 0)) < count(ids) for s in range(400)]
    assert 0.22 < np.mean(merged) < 0.38


def test_split_increases_the_number_of_ids_inside_each_instance():
    ids = instance_map()
    out = corrupt_instance_map(ids, rng(2), merge_prob=0, split_prob=1.0, erode_px=0)
    assert count(out) == 2 * count(ids)  # every instance cut in two non-empty halves
    assert np.array_equal(out == 0, ids == 0)
    assert is_refinement(out, ids)  # each half lies inside its instance
    for instance in np.unique(ids[ids > 0]):
        halves = np.unique(out[ids == instance])
        assert len(halves) == 2
        sizes = [(out[ids == instance] == h).sum() for h in halves]
        assert min(sizes) >= 0.15 * (ids == instance).sum()  # the cut is between the 25% and 75% quantiles


def test_erosion_only_removes_pixels_along_borders():
    ids = instance_map()
    out = corrupt_instance_map(ids, rng(3), merge_prob=0, split_prob=0, erode_px=2)
    assert not np.any((out > 0) & (ids == 0))  # nothing gained
    assert (out > 0).sum() < (ids > 0).sum()  # something lost
    assert is_refinement(out, ids) and is_refinement(ids, out)  # kept pixels keep their partition
    removed = (ids > 0) & (out == 0)
    # every removed pixel is within 2 px (chessboard) of a different id or of 0; interiors stay
    from scipy.ndimage import maximum_filter, minimum_filter

    near_border = maximum_filter(ids, size=5, mode="nearest") != minimum_filter(ids, size=5, mode="nearest")
    assert np.all(near_border[removed])
    assert out[44, 40] > 0 and out[12, 16] > 0
    # the image edge is not a border: block 7 keeps its pixels in column 0 away from other borders
    assert np.all(out[34:56, 0] > 0)


def test_all_noise_together_is_deterministic_by_seed_and_leaves_the_input_alone():
    ids = instance_map()
    before = ids.copy()
    a = corrupt_instance_map(ids, rng(7), 0.5, 0.5, 1)
    b = corrupt_instance_map(ids, rng(7), 0.5, 0.5, 1)
    c = corrupt_instance_map(ids, rng(8), 0.5, 0.5, 1)
    assert np.array_equal(ids, before)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.any((a > 0) & (ids == 0))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.int64])
def test_dtypes_and_degenerate_maps(dtype):
    ids = instance_map(dtype)
    assert corrupt_instance_map(ids, rng(), 1.0, 1.0, 1).dtype == dtype
    empty = np.zeros((8, 8), dtype=dtype)
    assert np.array_equal(corrupt_instance_map(empty, rng(), 1.0, 1.0, 1), empty)
    single = np.zeros((8, 8), dtype=dtype)
    single[3, 3] = 4  # one pixel: cannot be merged with anything or cut
    assert count(corrupt_instance_map(single, rng(), 1.0, 1.0, 0)) == 1


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        corrupt_instance_map(np.zeros((2, 2, 2), dtype=np.uint16), rng())
    with pytest.raises(ValueError):
        corrupt_instance_map(np.zeros((4, 4), dtype=np.float32), rng())


def test_noisy_scene_copy_corrupts_only_the_masks(tmp_path):
    from PIL import Image

    clean = tmp_path / "clean"
    for level in ("coarse", "fine"):
        (clean / level).mkdir(parents=True)
        for view in range(3):
            Image.fromarray(instance_map()).save(clean / level / f"frame_{view + 1:05d}.png")
    (clean / "transforms.json").write_text("{}")
    noise = mask_noise.NoiseConfig(merge_prob=1.0, split_prob=0.5, erode_px=1)
    stats = mask_noise.write_noisy_scene(clean, tmp_path / "noisy", noise, seed=0)
    assert (tmp_path / "noisy" / "transforms.json").read_text() == "{}"
    maps = [np.array(Image.open(tmp_path / "noisy" / "coarse" / f"frame_{v + 1:05d}.png")) for v in range(3)]
    assert all(m.dtype == np.uint16 for m in maps)
    assert not np.array_equal(maps[0], maps[1])  # views get different noise
    assert 0 < stats["coarse_masked_pixels_kept"] < 1
    again = mask_noise.write_noisy_scene(clean, tmp_path / "noisy2", noise, seed=0)
    assert again == stats
    assert np.array_equal(np.array(Image.open(tmp_path / "noisy2" / "coarse" / "frame_00001.png")), maps[0])
