"""A short real training whose masks come from SAM (tiny, random weights) through the cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from splatseg_ns.core import sam_masks
from splatseg_ns.core.demo_scene import write_demo_scene
from splatseg_ns.core.sam_masks import SamMaskConfig, build_tiny_sam


def train(config) -> "object":
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return trainer


def small_config(data: Path, tmp_path: Path, name: str):
    from splatseg_ns.method_config import splatseg_trainer_config

    config = splatseg_trainer_config()
    config.pipeline.datamanager.data = data
    config.output_dir = tmp_path / "outputs"
    config.experiment_name = "small"
    config.timestamp = name
    config.vis = "tensorboard"
    config.max_num_iterations = 30
    config.steps_per_save = 1000
    config.steps_per_eval_image = config.steps_per_eval_all_images = 10_000
    config.pipeline.model.feature_stage_start = 15
    config.pipeline.model.num_downscales = 0
    config.pipeline.model.num_sampled_pixels = 500
    config.pipeline.model.gfl.start_step = 5
    config.pipeline.model.gfl.refresh_every = 5
    return config


def test_clip_and_dino_ride_along_and_reach_the_gaussians(tmp_path, monkeypatch):
    from splatseg_ns.core import clip_embeddings, dino_features

    data = write_demo_scene(tmp_path / "scene", num_views=8, resolution=48)
    monkeypatch.setattr(clip_embeddings, "load_clip", lambda config, device="cpu": clip_embeddings.build_tiny_clip())
    real_load_dino = dino_features.load_dino
    monkeypatch.setattr(dino_features, "load_dino", lambda config, device="cpu": real_load_dino(config, device, False))
    config = small_config(data, tmp_path, "clip_dino")
    config.pipeline.datamanager.text_queries = True  # CLIP: tiny, random weights
    config.pipeline.datamanager.dino = True
    config.pipeline.datamanager.dino_config = dino_features.DinoConfig(resolution=64, num_components=8, pca_images=4)
    config.pipeline.model.dino_feature_dim = 8
    trainer = train(config)
    batch = trainer.pipeline.datamanager.cached_train[0]
    assert batch["dino"].shape[-1] == 8 and batch["clip_coarse_emb"].shape[0] == batch["clip_coarse_ids"].shape[0] > 0
    model = trainer.pipeline.model
    # the candidates gathered their masks' CLIP embeddings (unit rows where a mask was embedded)
    k = model.candidate_centers_coarse.shape[0]
    assert k > 0 and model.candidate_clip_coarse.shape[0] == k
    norms = model.candidate_clip_coarse.norm(dim=-1)
    assert ((norms - 1).abs() < 1e-4).any()
    assert model.gauss_params["dino_features"].abs().sum() > 0


def test_sam_masks_feed_training_and_are_cached(tmp_path, monkeypatch):
    data = write_demo_scene(tmp_path / "scene", num_views=8, resolution=48)
    shutil.rmtree(data / "coarse")  # no masks of the user's: mask source 'auto' falls back to SAM
    shutil.rmtree(data / "fine")
    loads = []

    def fake_load_sam(config, device="cpu"):  # offline: SAM's architecture at toy size, random weights
        loads.append(config.model_type)
        return build_tiny_sam(img_size=64, embed_dim=32, depth=1)

    monkeypatch.setattr(sam_masks, "load_sam", fake_load_sam)

    def make_config(name: str):
        config = small_config(data, tmp_path, name)
        config.pipeline.datamanager.sam = SamMaskConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        return config

    trainer = train(make_config("first"))
    cache = data / "splatseg_cache" / "masks"
    entries = sorted(cache.rglob("*.npz"))
    assert len(entries) == len(trainer.pipeline.datamanager.train_dataset)
    assert loads == ["vit_h"]
    cached = trainer.pipeline.datamanager.cached_train
    assert all(batch["coarse_mask"].shape == batch["image"].shape[:2] for batch in cached)
    assert any(batch["fine_mask"].max() > 0 for batch in cached)
    model = trainer.pipeline.model
    assert torch.isfinite(model.seg_features).all()
    assert model.seg_features.grad is None or torch.isfinite(model.seg_features.grad).all()

    # a second run reuses the cache: SAM is never loaded, no entry is rewritten
    stamps = [p.stat().st_mtime_ns for p in entries]
    train(make_config("second"))
    assert loads == ["vit_h"]
    assert [p.stat().st_mtime_ns for p in entries] == stamps
