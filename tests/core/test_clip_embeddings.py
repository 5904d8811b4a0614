"""CLIP embeddings of masked crops and of text (random weights)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from splatseg_ns.core.extract.clip_embeddings import (
    ClipConfig,
    ClipMaskEmbeddings,
    encode_masks,
    encode_text,
    load_clip,
    mask_crops,
)
from splatseg_ns.core.io.weights import WeightsError
from splatseg_ns.testing.tiny_models import TINY_CLIP_CONFIG, build_tiny_clip


@pytest.fixture(scope="module")
def clip():
    return build_tiny_clip()


def two_objects_image():
    """Two identical 10x8 objects (same pixels, same shape) on different backgrounds, and a third one."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 64, 3), dtype=np.uint8)  # cluttered background
    obj = rng.integers(0, 255, (10, 8, 3), dtype=np.uint8)
    shape = np.ones((10, 8), bool)
    shape[0, :3] = False
    ids = np.zeros((40, 64), np.int32)
    for i, (t, l) in enumerate([(3, 4), (25, 40)], start=1):
        image[t : t + 10, l : l + 8] = np.where(shape[..., None], obj, image[t : t + 10, l : l + 8])
        ids[t : t + 10, l : l + 8][shape] = i
    ids[5:20, 20:35] = 7  # another object
    ids[30, 10] = 9  # a single pixel
    return image, ids


def test_mask_crops_fill_outside_and_pad_to_a_centred_square():
    image = np.full((6, 8, 3), 200, np.uint8)
    ids = np.zeros((6, 8), np.int32)
    ids[1:3, 2:6] = 4  # 2 x 4 box
    ids[1, 2] = 0  # a hole in it
    got_ids, crops = mask_crops(image, ids, size=4, fill=np.array([1, 2, 3]))
    assert got_ids.tolist() == [4] and crops.shape == (1, 4, 4, 3)
    square = crops[0]
    np.testing.assert_array_equal(square[0], [[1, 2, 3]] * 4)  # padding rows above and below
    np.testing.assert_array_equal(square[3], [[1, 2, 3]] * 4)
    np.testing.assert_array_equal(square[1, 1:], [[200] * 3] * 3)
    np.testing.assert_array_equal(square[1, 0], [1, 2, 3])  # the hole takes the fill colour


def test_per_mask_embeddings_shape_norm_and_invariance(clip):
    model, tokenizer = clip
    image, ids = two_objects_image()
    got_ids, emb = encode_masks(model, image, ids, batch_size=2)
    assert got_ids.tolist() == [1, 2, 7, 9] and got_ids.dtype == np.int32
    assert emb.shape == (4, TINY_CLIP_CONFIG["embed_dim"]) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    # Identical masked crops -> identical embeddings, whatever surrounds them; others differ.
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)
    assert np.abs(emb[0] - emb[2]).max() > 1e-3
    # Batching changes nothing.
    _, one_by_one = encode_masks(model, image, ids, batch_size=1)
    np.testing.assert_allclose(one_by_one, emb, atol=1e-5)
    empty_ids, empty = encode_masks(model, image, np.zeros_like(ids))
    assert empty_ids.shape == (0,) and empty.shape == (0, TINY_CLIP_CONFIG["embed_dim"])


def test_both_levels_and_text(clip):
    model, tokenizer = clip
    image, ids = two_objects_image()
    embedder = ClipMaskEmbeddings(ClipConfig(batch_size=3), model=model, tokenizer=tokenizer)
    fine = ids.copy()
    fine[3:8, 4:12][ids[3:8, 4:12] == 1] = 11
    levels = embedder.levels(image, ids, fine)
    assert levels["coarse"][0].tolist() == [1, 2, 7, 9] and levels["fine"][0].tolist() == [1, 2, 7, 9, 11]
    text = embedder.encode_text(["a chair", "the leg of a chair", "a cup"])
    assert text.shape == (3, TINY_CLIP_CONFIG["embed_dim"])
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(encode_text(model, tokenizer, ["a cup"])[0], text[2], atol=1e-6)
    assert embedder.settings["model_name"] == "ViT-B-16" and embedder.settings["weights"] == "laion2b_s34b_b88k"


def test_clip_checkpoint_round_trip_wrong_model_and_offline(clip, tmp_path, offline):
    import open_clip

    model, _ = clip
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "splatseg-tiny.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    narrower = json.loads(json.dumps(TINY_CLIP_CONFIG))
    narrower["embed_dim"] = 16
    (configs / "splatseg-tiny16.json").write_text(json.dumps(narrower))
    open_clip.add_model_config(configs)
    path = tmp_path / "tiny_clip.pt"
    torch.save(model.state_dict(), path)

    loaded, tokenizer = load_clip(ClipConfig(model_name="splatseg-tiny", checkpoint=path))
    image, ids = two_objects_image()
    np.testing.assert_allclose(encode_masks(loaded, image, ids)[1], encode_masks(model, image, ids)[1], atol=1e-5)
    assert encode_text(loaded, tokenizer, ["a cup"]).shape == (1, 32)

    with pytest.raises(WeightsError, match="cannot load into open_clip splatseg-tiny16"):
        load_clip(ClipConfig(model_name="splatseg-tiny16", checkpoint=path))
    with pytest.raises(WeightsError, match="unknown open_clip model"):
        load_clip(ClipConfig(model_name="no-such-model"))
    with pytest.raises(WeightsError, match="no pretrained tag"):
        load_clip(ClipConfig(pretrained="no_such_tag"))
    with pytest.raises(WeightsError) as err:
        load_clip(ClipConfig())
    message = str(err.value)
    assert str(offline / "open_clip" / "ViT-B-16_laion2b_s34b_b88k.bin") in message
    assert "huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_pytorch_model.bin" in message
    assert "clip-config.checkpoint" in message
