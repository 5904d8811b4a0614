"""`splatseg masks`: the real extractors with tiny random models, sharded, resumed."""

from __future__ import annotations

import json

import numpy as np

from splatseg_ns.core.extract.cache import FeatureCache
from splatseg_ns.core.extract.dino_features import load_dino as real_load_dino
from splatseg_ns.testing.tiny_models import build_tiny_clip, build_tiny_sam
from splatseg_ns.tools.masks import run_masks
from tests.helpers import write_images

_DINO = {}


def dino_model_small():
    """The real DINO ViT-S/8 architecture with random weights (built once)."""
    from splatseg_ns.core.extract.dino_features import DinoConfig

    if "model" not in _DINO:
        _DINO["model"] = real_load_dino(DinoConfig(), pretrained=False)
    return _DINO["model"]


def test_masks_command_end_to_end_with_tiny_models(tmp_path, monkeypatch):
    """`run_masks` (splatseg masks) with the real extractors, their models swapped for tiny random ones."""
    import splatseg_ns.core.extract.clip_embeddings as clip_mod
    import splatseg_ns.core.extract.dino_features as dino_mod
    import splatseg_ns.core.extract.sam_masks as sam_mod

    root = tmp_path / "scene"
    images = write_images(root, n=3, size=(40, 48))
    loads = []
    monkeypatch.setattr(sam_mod, "load_sam", lambda config, device: loads.append("sam") or build_tiny_sam())
    monkeypatch.setattr(dino_mod, "load_dino",
                        lambda config, device: loads.append("dino") or dino_model_small())
    monkeypatch.setattr(clip_mod, "load_clip",
                        lambda config, device: loads.append("clip") or build_tiny_clip())
    sam_config = sam_mod.SamMaskConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    dino_config = dino_mod.DinoConfig(resolution=32, num_components=8, pca_images=2)
    kwargs = dict(sam_config=sam_config, dino=True, clip=True, dino_config=dino_config, device="cpu", progress=False)

    summary = run_masks(root, images, None, shard=(0, 2), **kwargs)
    assert summary.images == 2 and summary.counts["masks"] == {"missing": 2}
    summary = run_masks(root, images, None, shard=(1, 2), **kwargs)
    assert summary.counts == {"masks": {"missing": 1}, "dino": {"missing": 1}, "clip": {"missing": 1}}
    loads.clear()
    summary = run_masks(root, images, None, **kwargs)
    assert summary.counts["dino"] == {"hit": 3} and loads == []  # nothing to do: no model loaded

    cache = FeatureCache(root)
    coarse, fine = cache.load_masks(images[0])
    assert coarse.shape == fine.shape == (40, 48)
    features = cache.load_dino(images[0])
    assert features.dtype == np.float16 and features.shape == (3, 4, 8)  # 32 px long side / patch 8
    levels = cache.load_clip(images[0])
    for level, ids_map in (("coarse", coarse), ("fine", fine)):
        ids, emb = levels[level]
        np.testing.assert_array_equal(ids, np.unique(ids_map[ids_map > 0]))
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=2e-3)
    # The scene-wide PCA basis was fit once and every entry names it.
    pca_record = json.loads((root / "splatseg_cache" / "dino" / "_pca.json").read_text())
    assert 0 < pca_record["explained_variance"] <= 1
    for image in images:
        assert cache.lookup("dino", image).manifest["settings"]["pca_sha1"] == pca_record["data_sha1"]
