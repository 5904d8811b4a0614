"""scenes/mask_noise.py: each failure of automatic masks, with a known answer, and the two named strengths."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from splatseg_ns.scenes import mask_noise as mn

FLOOR, LAMP, TABLE, BOOKS = 1, 2, 3, 4
SHADE, POLE, TOP, BOOK_A, BOOK_B, BOOK_C = 10, 11, 12, 13, 14, 15


def view() -> tuple:
    """64x64 coarse and fine maps: a floor (one part) under everything; a lamp (a 12x12 shade on a pole 2 px wide)
    touching a table (one part); books of three touching parts that touch only the floor; sky (0) at the top."""
    coarse = np.zeros((64, 64), dtype=np.uint16)
    fine = np.zeros_like(coarse)
    coarse[40:, :], fine[40:, :] = FLOOR, FLOOR
    coarse[6:18, 4:16], fine[6:18, 4:16] = LAMP, SHADE
    coarse[18:40, 9:11], fine[18:40, 9:11] = LAMP, POLE
    coarse[24:40, 11:30], fine[24:40, 11:30] = TABLE, TOP  # touches the pole along its right side
    for part, cols in ((BOOK_A, slice(40, 46)), (BOOK_B, slice(46, 52)), (BOOK_C, slice(52, 58))):
        coarse[30:40, cols], fine[30:40, cols] = BOOKS, part
    return coarse, fine


def rng(seed=0):
    return np.random.default_rng(seed)


def ids(m: np.ndarray) -> set:
    return set(np.unique(m[m > 0]).tolist())


def refines(fine: np.ndarray, coarse: np.ndarray) -> bool:
    """Every fine mask lies inside one coarse mask (on pixels masked at both levels)."""
    both = (fine > 0) & (coarse > 0)
    owner = {}
    return all(owner.setdefault(f, c) == c for f, c in zip(fine[both].tolist(), coarse[both].tolist()))


def test_part_tree_finds_which_parts_make_which_object():
    tree = mn.part_tree(*view())
    assert {k: sorted(v) for k, v in tree.items()} == {
        FLOOR: [FLOOR], LAMP: [SHADE, POLE], TABLE: [TOP], BOOKS: [BOOK_A, BOOK_B, BOOK_C]}


def test_whole_object_fine_masks_replace_the_parts_of_objects_with_several():
    coarse, fine = view()
    c, f = mn.flip_granularity(coarse, fine, mn.part_tree(coarse, fine), rng(), whole_object_fine=1.0,
                               part_as_object=0.0)
    assert np.array_equal(c, coarse)
    assert len(ids(f[coarse == LAMP])) == 1 and (f[coarse == LAMP] > 0).all()  # the lamp is one fine mask
    assert len(ids(f[coarse == BOOKS])) == 1
    assert np.array_equal(f == TOP, fine == TOP) and np.array_equal(f == FLOOR, fine == FLOOR)  # one-part objects


def test_coarse_mask_of_only_the_largest_part_leaves_the_rest_unmasked():
    coarse, fine = view()
    c, f = mn.flip_granularity(coarse, fine, mn.part_tree(coarse, fine), rng(), 0.0, part_as_object=1.0)
    assert np.array_equal(f, fine)
    assert np.array_equal(c == LAMP, fine == SHADE)  # a shade without its pole
    assert (c[fine == POLE] == 0).all()
    assert np.array_equal(c == TABLE, coarse == TABLE)


def test_sibling_merges_join_touching_parts_of_one_object_only():
    coarse, fine = view()
    tree = mn.part_tree(coarse, fine)
    f = mn.merge_siblings(fine, tree, rng(), prob=1.0)
    assert len(ids(f[coarse == BOOKS])) == 1 and len(ids(f[coarse == LAMP])) == 1
    assert ids(f[coarse == TABLE]) == {TOP} and ids(f[coarse == FLOOR]) == {FLOOR}  # the pole touches the top: no merge
    assert np.array_equal(mn.merge_siblings(fine, tree, rng(), prob=0.0), fine)
    merged = [len(ids(mn.merge_siblings(fine, tree, rng(s), 0.5)[coarse == BOOKS])) for s in range(300)]
    assert 0.15 < np.mean([m == 3 for m in merged]) < 0.35  # no merge of the two pairs: 0.25


def test_thin_parts_are_missed_more_often_the_thinner_they_are():
    coarse, fine = view()
    assert mn.half_width(fine == POLE) == 1.0 and mn.half_width(fine == SHADE) == 6.0
    assert mn.thin_miss_probability(1.0, 0.6, 6.0) == pytest.approx(0.6)
    assert mn.thin_miss_probability(3.5, 0.6, 6.0) == pytest.approx(0.3)
    assert mn.thin_miss_probability(6.0, 0.6, 6.0) == 0.0
    f = mn.drop_thin_parts(fine, rng(), thin_miss=1.0, thin_px=6.0)
    assert (f[fine == POLE] == 0).all() and np.array_equal(f == SHADE, fine == SHADE)
    missed = [(mn.drop_thin_parts(fine, rng(s), 0.6, 6.0)[fine == POLE] == 0).all() for s in range(400)]
    assert 0.52 < np.mean(missed) < 0.68


def test_touching_neighbours_merge_at_both_levels_and_never_with_the_floor():
    coarse, fine = view()
    c, f = mn.merge_neighbours(coarse, fine, rng(), prob=1.0)
    assert len(ids(c[(coarse == LAMP) | (coarse == TABLE)])) == 1  # the lamp and the table it touches
    assert f[fine == POLE][0] == f[fine == TOP][0]  # the parts along their border merge too
    assert ids(f[fine == SHADE]) != ids(f[fine == POLE])  # the rest of the lamp stays its own part
    assert ids(c[coarse == BOOKS]) == {BOOKS} and ids(c[coarse == FLOOR]) == {FLOOR}  # the books touch only the floor
    assert refines(f, c)
    assert np.array_equal(mn.merge_neighbours(coarse, fine, rng(), prob=0.0)[0], coarse)


def test_a_coarse_split_cuts_the_fine_masks_along_the_same_line():
    coarse, fine = view()
    c, (f,) = mn.split_instances(coarse, rng(1), prob=1.0, nested=[fine])
    assert len(ids(c)) > len(ids(coarse))
    assert refines(f, c)
    assert len(ids(f)) > len(ids(fine))
    assert np.array_equal(c > 0, coarse > 0) and np.array_equal(f > 0, fine > 0)  # a cut moves no pixel


def test_borders_shift_both_ways_by_whole_pixels():
    m = np.zeros((32, 32), dtype=np.int64)
    m[8:18, 8:18] = 1
    m[8:18, 18:24] = 2  # the neighbour on the right
    m[0:4, 0:6] = 3  # in the image's corner
    eroded = mn.shift_borders(m, {1: -2, 3: -1})
    assert np.array_equal(np.argwhere(eroded == 1).min(0), [10, 10]) and (eroded == 1).sum() == 36
    assert (eroded == 3).sum() == 3 * 5  # not eroded along the image's edge
    dilated = mn.shift_borders(m, {1: 2})
    assert (dilated == 1).sum() == 14 * 14  # bleeds over the background and the neighbour
    assert (dilated == 2).sum() == (m == 2).sum() - 2 * 10
    shifts = mn.random_shifts(m, rng(), erode_px=0, border_px=3)
    assert set(shifts) == {1, 2, 3} and all(-3 <= s <= 3 for s in shifts.values())
    many = [s for seed in range(100) for s in mn.random_shifts(m, rng(seed), 0, 3).values()]
    assert set(many) == set(range(-3, 4))


def test_spurious_masks_are_small_new_ids_on_the_background_at_both_levels():
    coarse, fine = view()
    where = coarse == 0
    c, f = mn.add_spurious([coarse, fine], where, rng(4), mean_count=6)
    new_c, new_f = (c != coarse), (f != fine)
    assert new_c.any() and np.array_equal(new_c, new_f)  # the same blobs at both levels
    assert ids(c[new_c]).isdisjoint(ids(coarse)) and ids(f[new_f]).isdisjoint(ids(fine))
    assert all((c == i).sum() <= np.pi * 5**2 + 1 for i in ids(c[new_c]))
    from scipy.ndimage import distance_transform_edt

    assert distance_transform_edt(~where)[new_c].max() <= 5  # each blob is centred on the background


def test_permutation_keeps_the_partition():
    coarse, _ = view()
    out = mn.permute_ids(coarse.astype(np.int64), rng(3))
    assert ids(out) == set(range(1, len(ids(coarse)) + 1))
    pairs = set(zip(coarse.ravel().tolist(), out.ravel().tolist()))
    assert len(pairs) == len(ids(coarse)) + 1  # a bijection, 0 kept


def test_corrupt_view_is_seeded_and_keeps_the_levels_consistent():
    coarse, fine = view()
    strong = mn.NOISE_LEVELS["strong"]
    a, b = mn.corrupt_view(coarse, fine, strong, rng(7)), mn.corrupt_view(coarse, fine, strong, rng(7))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert a[0].dtype == coarse.dtype and a[0].shape == coarse.shape
    others = [mn.corrupt_view(coarse, fine, strong, rng(s)) for s in range(8, 14)]
    assert any(not np.array_equal(o[1], a[1]) for o in others)
    no_borders = replace(strong, border_px=0, spurious_per_view=0.0)
    assert all(refines(f, c) for c, f in (mn.corrupt_view(coarse, fine, no_borders, rng(s)) for s in range(40)))
    exact = mn.NoiseConfig(merge_prob=0.0, split_prob=0.0, erode_px=0)
    c, f = mn.corrupt_view(coarse, fine, exact, rng())
    assert len(set(zip(c.ravel().tolist(), coarse.ravel().tolist()))) == len(ids(coarse)) + 1  # only renumbered
    with pytest.raises(ValueError, match="2-D"):
        mn.corrupt_view(coarse[None], fine[None], strong, rng())
    with pytest.raises(ValueError, match="integer"):
        mn.corrupt_view(coarse.astype(np.float32), fine, strong, rng())
    with pytest.raises(ValueError, match="Unknown mask noise 'loud'"):
        mn.noise_config("loud")


def test_noisy_scene_copy_corrupts_only_the_masks(tmp_path):
    from PIL import Image

    clean = tmp_path / "clean"
    coarse, fine = view()
    for level, m in (("coarse", coarse), ("fine", fine)):
        (clean / level).mkdir(parents=True)
        for v in range(3):
            Image.fromarray(m).save(clean / level / f"frame_{v + 1:05d}.png")
    (clean / "transforms.json").write_text("{}")
    stats = mn.write_noisy_scene(clean, tmp_path / "noisy", mn.NOISE_LEVELS["strong"], seed=0)
    assert (tmp_path / "noisy" / "transforms.json").read_text() == "{}"
    maps = [np.array(Image.open(tmp_path / "noisy" / "fine" / f"frame_{v + 1:05d}.png")) for v in range(3)]
    assert all(m.dtype == np.uint16 for m in maps)
    assert not np.array_equal(maps[0], maps[1])  # views get different noise
    assert 0 < stats["fine_masked_pixels_kept"] < 1
    again = mn.write_noisy_scene(clean, tmp_path / "noisy2", mn.NOISE_LEVELS["strong"], seed=0)
    assert again == stats
    assert np.array_equal(np.array(Image.open(tmp_path / "noisy2" / "fine" / "frame_00001.png")), maps[0])
