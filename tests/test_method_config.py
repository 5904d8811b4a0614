"""The registered method: nerfstudio finds it, its config round-trips, a real ns-train run loads and separates objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from nerfstudio.engine.optimizers import Optimizers

from splatseg_ns.core.extract.masks import FolderMasks
from splatseg_ns.method_config import splatseg_trainer_config
from splatseg_ns.model import SplatsegModel
from tests.helpers import make_model


def mask_feature_stats(features: torch.Tensor, ids: torch.Tensor):
    """Mean cosine of pixels to their own mask's mean feature, and mean cosine between mask means."""
    f = F.normalize(features, dim=-1)
    means = {int(k): F.normalize(f[ids == k].mean(0), dim=0) for k in ids.unique() if k > 0 and (ids == k).sum() > 5}
    within = [float((f[ids == k] @ m).mean()) for k, m in means.items()]
    keys = sorted(means)
    between = [float(means[a] @ means[b]) for a in keys for b in keys if a < b]
    return within, between


def test_registered_as_nerfstudio_method():
    from nerfstudio.plugins.registry import discover_methods

    methods, descriptions = discover_methods()
    assert "splatseg" in methods
    assert methods["splatseg"].pipeline.model._target is SplatsegModel
    assert "segment" in descriptions["splatseg"].lower()


def test_config_yaml_round_trip():
    config = splatseg_trainer_config()
    config.pipeline.model.seg_feature_dim = 32
    loaded = yaml.load(yaml.dump(config), Loader=yaml.Loader)
    assert loaded == config
    assert loaded.pipeline.model.seg_feature_dim == 32
    assert loaded.max_num_iterations > loaded.pipeline.model.feature_stage_start


def test_every_param_group_has_an_optimizer():
    model = make_model()
    groups = model.get_param_groups()
    assert "seg_features" in groups
    optimizers = Optimizers(splatseg_trainer_config().optimizers, groups)  # raises on a missing optimizer
    assert set(optimizers.optimizers) == set(groups)
    assert optimizers.config["seg_features"]["optimizer"].lr == pytest.approx(0.01)


def test_trained_run_loads_and_features_separate_objects(trained_demo_run: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    # Loading goes through torch.load with weights_only=True (torch>=2.6): it must just work.
    _, pipeline, checkpoint, step = eval_setup(trained_demo_run, test_mode="test")
    model = pipeline.model
    assert step == 399 and checkpoint.exists()
    assert model.seg_features.shape == (model.num_points, 24)
    assert torch.isfinite(model.seg_features).all()
    # GFL ran: the checkpoint holds global candidates, about one per object (4) at the coarse level
    assert 2 <= model.levels["coarse"].centers.shape[0] <= 8, model.levels["coarse"].centers.shape
    assert model.levels["fine"].centers.shape[0] >= model.levels["coarse"].centers.shape[0]

    dataset = pipeline.datamanager.train_dataset
    masks = FolderMasks(Path(pipeline.datamanager.config.data))
    coarse_within, coarse_between, fine_within, fine_between, psnrs = [], [], [], [], []
    for i in range(0, len(dataset), 3):
        outputs = model.get_outputs_for_camera(dataset.cameras[i : i + 1])
        features = outputs["seg_features"]
        coarse, fine = (torch.from_numpy(m) for m in masks.load(dataset.image_filenames[i], features.shape[:2]))
        w, b = mask_feature_stats(features[..., :12], coarse)
        coarse_within += w
        coarse_between += b
        w, b = mask_feature_stats(features, fine)
        fine_within += w
        fine_between += b
        image = torch.from_numpy(dataset.get_numpy_image(i)[..., :3].astype(np.float32) / 255)
        psnrs.append(float(-10 * torch.log10(((outputs["rgb"] - image) ** 2).mean())))

    assert np.mean(psnrs) > 20, f"colour stage did not fit the scene (PSNR {np.mean(psnrs):.1f})"
    # Features of one object agree; different objects are measurably apart.
    assert np.mean(coarse_within) > 0.8, coarse_within
    assert np.mean(coarse_between) < np.mean(coarse_within) - 0.4, (coarse_within, coarse_between)
    assert np.mean(fine_between) < np.mean(fine_within) - 0.2, (fine_within, fine_between)

    # The votes saved at the last step are the ones the loaded run casts again: a mask maps to a candidate
    # by its rendered features alone, not by state that only the training process had.
    saved = {level: model.levels[level].vote_labels.clone() for level in ("coarse", "fine")}
    assert all(labels.shape[0] == model.num_points and (labels >= 0).any() for labels in saved.values())
    model.compute_votes(pipeline.datamanager)
    for level, labels in saved.items():
        assert torch.equal(model.levels[level].vote_labels, labels), level
