"""SAM as the two-level mask source: the coarse/fine construction, a tiny SAM end to end, checkpoint errors."""

import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from splatseg_ns.core.extract.sam_masks import SamMaskConfig, SamMasks, load_sam, two_level_maps
from splatseg_ns.core.io import weights as weights_mod
from splatseg_ns.core.io.weights import WeightsError
from splatseg_ns.testing.tiny_models import build_tiny_sam


def box(shape, top, left, bottom, right):
    m = np.zeros(shape, bool)
    m[top:bottom, left:right] = True
    return m


def reference_maps(masks, scores=None, min_area=0):
    """Per pixel: the largest (coarse) / smallest (fine) mask holding it, as a mask index or -1."""
    n = len(masks)
    areas = np.array([m.sum() for m in masks])
    scores = np.zeros(n) if scores is None else np.asarray(scores)
    order = sorted((k for k in range(n) if areas[k] >= max(min_area, 1)), key=lambda k: (-areas[k], -scores[k], k))
    h, w = masks[0].shape
    coarse, fine = np.full((h, w), -1), np.full((h, w), -1)
    for y in range(h):
        for x in range(w):
            holding = [k for k in order if masks[k][y, x]]
            if holding:
                coarse[y, x], fine[y, x] = holding[0], holding[-1]
    return coarse, fine, order


def assert_same_partition(ids, reference, order):
    """`ids` numbers the reference's segments 1..M (0 where the reference has none), in area order."""
    assert ids.dtype == np.int32
    np.testing.assert_array_equal(ids == 0, reference == -1)
    visible = [k for k in order if (reference == k).any()]
    assert sorted(np.unique(ids[ids > 0])) == list(range(1, len(visible) + 1))
    for new_id, k in enumerate(visible, start=1):
        np.testing.assert_array_equal(ids == new_id, reference == k)


def test_coarse_keeps_the_larger_and_fine_the_smaller_mask():
    shape = (8, 10)
    table = box(shape, 0, 0, 8, 6)  # the object
    leg = box(shape, 5, 0, 8, 2)  # a part of it
    knob = box(shape, 6, 0, 7, 1)  # a part of the part
    cup = box(shape, 1, 7, 4, 10)  # another object, overlapping nothing
    coarse, fine = two_level_maps([leg, cup, knob, table])
    # ids follow area: table (48 px) 1, cup (9) 2, leg (6) 3, knob (1) 4, where visible
    assert set(np.unique(coarse)) == {0, 1, 2}
    np.testing.assert_array_equal(coarse == 1, table)  # the parts vanish inside the whole
    np.testing.assert_array_equal(coarse == 2, cup)
    assert set(np.unique(fine)) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(fine == 4, knob)
    np.testing.assert_array_equal(fine == 3, leg & ~knob)
    np.testing.assert_array_equal(fine == 1, table & ~leg)
    np.testing.assert_array_equal(fine == 2, cup)
    np.testing.assert_array_equal(fine == 0, ~(table | cup))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_area", [0, 12])
def test_matches_a_per_pixel_reference(seed, min_area):
    rng = np.random.default_rng(seed)
    shape = (14, 17)
    masks = []
    for _ in range(rng.integers(1, 9)):
        t, l = rng.integers(0, 12), rng.integers(0, 15)
        masks.append(box(shape, t, l, t + rng.integers(1, 10), l + rng.integers(1, 10)))
    masks.append(masks[0].copy())  # an exact duplicate: a tie in area
    scores = rng.random(len(masks))
    coarse, fine = two_level_maps(np.stack(masks), scores=scores, min_area=min_area)
    ref_coarse, ref_fine, order = reference_maps(masks, scores, min_area)
    assert_same_partition(coarse, ref_coarse, order)
    assert_same_partition(fine, ref_fine, order)


def test_edge_cases():
    empty = np.zeros((0, 3, 4), bool)
    for level in two_level_maps(empty):
        np.testing.assert_array_equal(level, np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="at least one mask"):
        two_level_maps([])
    tiny = box((4, 4), 0, 0, 1, 1)
    big = box((4, 4), 0, 0, 4, 4)
    coarse, fine = two_level_maps([tiny, big], min_area=2)
    assert (coarse == 1).all() and (fine == 1).all()
    # Equal areas: the better score wins in both maps.
    a, b = box((2, 4), 0, 0, 2, 2), box((2, 4), 0, 1, 2, 3)
    coarse, _ = two_level_maps([a, b], scores=[0.5, 0.9])
    np.testing.assert_array_equal(coarse[:, 1], [1, 1])  # b is id 1 and takes the overlap
    np.testing.assert_array_equal(coarse[:, 0], [2, 2])
    with pytest.raises(ValueError, match="scores"):
        two_level_maps([a, b], scores=[1.0])


def synthetic_image(h=48, w=64):
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = (190, 60, 40)
    image[8:36, 6:30] = (30, 200, 60)
    image[20:30, 12:22] = (240, 240, 240)
    image[10:40, 40:60] = (20, 30, 210)
    return image


@pytest.fixture(scope="module")
def tiny_sam():
    return build_tiny_sam(img_size=64, embed_dim=32, depth=1)


def test_tiny_sam_end_to_end(tiny_sam):
    # A random SAM predicts junk with junk scores: thresholds at 0 keep its masks.
    config = SamMaskConfig(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    sam = SamMasks(config, model=tiny_sam)
    image = synthetic_image()
    coarse, fine = sam(image)
    assert coarse.shape == fine.shape == image.shape[:2]
    assert coarse.dtype == fine.dtype == np.int32
    records = sam.raw_masks(image)
    assert records, "the tiny SAM should produce some masks"
    expected = two_level_maps([r["segmentation"] for r in records], scores=[r["predicted_iou"] for r in records])
    np.testing.assert_array_equal(coarse, expected[0])
    np.testing.assert_array_equal(fine, expected[1])
    assert fine.max() >= coarse.max() >= 1
    assert sam.settings["checkpoint"] == "sam_vit_h_4b8939.pth" and sam.settings["points_per_side"] == 6


def test_large_images_are_shrunk_for_sam_and_maps_scaled_back(tiny_sam):
    config = SamMaskConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, max_side=32)
    image = synthetic_image(96, 128)
    coarse, fine = SamMasks(config, model=tiny_sam)(image)
    assert coarse.shape == fine.shape == (96, 128)
    small = SamMasks(config, model=tiny_sam)(np.asarray(Image.fromarray(image).resize((32, 24), Image.BILINEAR)))
    np.testing.assert_array_equal(coarse[2::4, 2::4], small[0])  # nearest upscaling of the 32x24 result
    np.testing.assert_array_equal(fine[2::4, 2::4], small[1])
    with pytest.raises(ValueError, match="uint8"):
        SamMasks(config, model=tiny_sam)(image.astype(np.float32))


def test_missing_checkpoint_offline_names_file_folder_and_flag(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLATSEG_CACHE", str(tmp_path / "weights"))

    def offline(url, destination):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(weights_mod, "_download", offline)
    with pytest.raises(WeightsError) as err:
        load_sam(SamMaskConfig(model_type="vit_b"))
    message = str(err.value)
    assert str(tmp_path / "weights" / "sam_vit_b_01ec64.pth") in message
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth" in message
    assert "sam.checkpoint" in message and "name resolution" in message
    with pytest.raises(WeightsError, match=r"nowhere\.pth: SAM vit_h checkpoint not found"):
        load_sam(SamMaskConfig(checkpoint=tmp_path / "nowhere.pth"))


def test_checkpoint_of_another_model_type_says_which(tmp_path):
    # Only the image encoder's width matters to tell the type; a stub keeps the test light.
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1, 2, 2, 768), "mask_decoder.x": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match=r"looks like a vit_b checkpoint; pass --\[pipeline.datamanager.\]sam.model-type vit_b"):
        load_sam(SamMaskConfig(model_type="vit_h", checkpoint=path))
    other = tmp_path / "dino.pth"
    torch.save({"blocks.0.attn.qkv.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(WeightsError, match="not a SAM checkpoint"):
        load_sam(SamMaskConfig(checkpoint=other))
    broken = tmp_path / "sam_vit_h_4b8939.pth"
    broken.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError, match="cannot read the checkpoint.*incomplete"):
        load_sam(SamMaskConfig(checkpoint=broken))


def test_tiny_sam_checkpoint_round_trip(tmp_path, tiny_sam, monkeypatch):
    """A saved state dict loads back through `load_sam` (registry swapped for the tiny builder)."""
    import segment_anything

    path = tmp_path / "tiny.pth"
    torch.save(tiny_sam.state_dict(), path)
    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", lambda: build_tiny_sam(seed=1))
    loaded = load_sam(SamMaskConfig(model_type="vit_b", checkpoint=path))
    for (name, a), (_, b) in zip(tiny_sam.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
