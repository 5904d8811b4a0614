"""DINO patch features with a scene-wide PCA, and CLIP embeddings of masked crops (random weights)."""

import json

import numpy as np
import pytest
import torch

from splatseg_ns.core.cache import WeightsError
from splatseg_ns.core.clip_embeddings import (
    TINY_CLIP_CONFIG,
    ClipConfig,
    ClipMaskEmbeddings,
    build_tiny_clip,
    encode_masks,
    encode_text,
    load_clip,
    mask_crops,
)
from splatseg_ns.core.dino_features import (
    DinoConfig,
    DinoFeatures,
    apply_pca,
    dino_patch_features,
    fit_pca,
    input_size,
    load_dino,
)


def scene_image(seed, h=40, w=56):
    rng = np.random.default_rng(seed)
    image = np.repeat(np.repeat(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    return image


# ----------------------------------------------------------------------------------------------
# DINO
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dino():
    """The real ViT-S/8 DINO architecture, random weights."""
    return load_dino(DinoConfig(), pretrained=False)


def test_input_size_keeps_aspect_on_the_patch_grid():
    assert input_size((480, 640), 448, 8) == (336, 448)
    assert input_size((1000, 10), 64, 8) == (64, 8)  # never below one patch
    assert input_size((224, 224), 224, 8) == (224, 224)


def test_patch_features_match_timm_at_the_training_size(dino):
    image = scene_image(0, 224, 224)  # at 224 px ours resizes nothing and interpolates nothing
    ours = dino_patch_features(dino, image, 224)
    x = torch.from_numpy((image / np.float32(255) - (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)).float()
    with torch.no_grad():
        theirs = dino.forward_features(x.permute(2, 0, 1)[None])[0, 1:].reshape(28, 28, -1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_any_resolution_gives_a_patch_grid_of_features(dino):
    features = dino_patch_features(dino, scene_image(1, 40, 56), 64)
    assert features.shape == (6, 8, 384) and features.dtype == np.float32  # 40x56 -> 48x64 px -> 6x8 patches
    assert np.isfinite(features).all()


def test_scene_wide_pca_gives_every_view_the_same_channels(dino):
    config = DinoConfig(resolution=64, num_components=16, pca_images=2)
    extractor = DinoFeatures(config, model=dino)
    views = [scene_image(s) for s in range(3)]
    with pytest.raises(RuntimeError, match="fit"):
        extractor(views[0])
    sample = extractor.pca_sample(["a", "b", "c", "d", "e"])
    assert sample == ["a", "e"]
    mean, basis, explained = extractor.fit(views[:2])
    assert basis.shape == (384, 16) and 0 < explained <= 1
    out = [extractor(v) for v in views]
    assert all(o.dtype == np.float16 and o.shape == (6, 8, 16) for o in out)
    # One basis for all: a view reduced alone equals that view's part of the reduced stack.
    raw = [extractor.patch_features(v) for v in views]
    stacked = apply_pca(np.stack(raw), mean, basis)
    for k in range(3):
        np.testing.assert_allclose(out[k].astype(np.float32), stacked[k], rtol=1e-2, atol=1e-2)
    # The same patch content in two views gets the same reduced feature.
    one_patch = apply_pca(raw[0][2, 3], mean, basis)
    np.testing.assert_allclose(one_patch, apply_pca(raw[0], mean, basis)[2, 3], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_fit_pca_matches_svd_and_is_order_and_sign_stable(k):
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(600, 5)) * np.array([9.0, 5.0, 3.0, 2.0, 1.0])
    mix = np.linalg.qr(rng.normal(size=(12, 12)))[0][:5]
    data = latent @ mix + 0.01 * rng.normal(size=(600, 12)) + 3.0
    maps = [data[:300].reshape(15, 20, 12), data[300:].reshape(10, 30, 12)]
    mean, basis = fit_pca(maps, k, max_samples=10_000)
    _, _, vt = np.linalg.svd(data - data.mean(0), full_matrices=False)
    np.testing.assert_allclose(np.abs((basis.T * vt[:k]).sum(1)), 1, atol=1e-4)  # same directions
    np.testing.assert_allclose(mean, data.mean(0), atol=1e-5)
    mean2, basis2 = fit_pca(maps[::-1], k, max_samples=10_000)
    np.testing.assert_allclose(basis2, basis, atol=1e-5)  # same signs whatever the order
    _, _, explained = fit_pca(maps, 5, return_explained=True)
    assert explained > 0.999
    with pytest.raises(ValueError, match="components"):
        fit_pca(maps, 13)


def test_dino_checkpoint_round_trip_wrong_model_and_offline(dino, tmp_path, offline):
    path = tmp_path / "dino_s8.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in dino.state_dict().items()}}, path)  # DINO's own layout
    loaded = load_dino(DinoConfig(checkpoint=path))
    image = scene_image(3)
    np.testing.assert_allclose(dino_patch_features(loaded, image, 64), dino_patch_features(dino, image, 64), atol=1e-5)
    with pytest.raises(WeightsError, match=r"looks like a vit_small_patch8_224_dino checkpoint; pass --\[pipeline.datamanager.\]dino-config.model-name"):
        load_dino(DinoConfig(model_name="vit_small_patch16_224_dino", checkpoint=path))
    with pytest.raises(WeightsError) as err:
        load_dino(DinoConfig())
    message = str(err.value)
    assert str(offline / "dino_deitsmall8_pretrain.pth") in message and "dino-config.checkpoint" in message
    assert "dl.fbaipublicfiles.com/dino/dino_deitsmall8_pretrain" in message


# ----------------------------------------------------------------------------------------------
# CLIP
# ----------------------------------------------------------------------------------------------


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
