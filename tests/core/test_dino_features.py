"""DINO patch features with a scene-wide PCA (random weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from splatseg_ns.core.extract.dino_features import (
    DinoConfig,
    DinoFeatures,
    apply_pca,
    dino_patch_features,
    fit_pca,
    input_size,
    load_dino,
)
from splatseg_ns.core.io.weights import WeightsError


def scene_image(seed, h=40, w=56):
    rng = np.random.default_rng(seed)
    image = np.repeat(np.repeat(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), 8, 0), 8, 1)
    return image


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
