"""SplatsegModel: features through densification and checkpoints, the feature stage, GFL, DINO, the NaN stop."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from gsplat.strategy import ops
from nerfstudio.engine.optimizers import Optimizers

from splatseg_ns.core.segment.losses import NonFiniteFeaturesError
from splatseg_ns.method_config import splatseg_trainer_config
from splatseg_ns.model import SplatsegModel
from tests.helpers import make_feature_stage_model, make_model


def _step_all(model: SplatsegModel, optimizers: Optimizers) -> None:
    """One optimiser step on every Gaussian parameter, so each has Adam state to carry."""
    loss = sum(p.sum() for p in model.gauss_params.values())
    loss.backward()
    for opt in optimizers.optimizers.values():
        opt.step()
        opt.zero_grad()


def test_coarse_dim_must_be_smaller_than_feature_dim():
    with pytest.raises(ValueError, match="coarse_feature_dim"):
        make_model(seg_feature_dim=8, coarse_feature_dim=8)


def test_features_follow_duplicate_split_and_prune():
    model = make_model(num_points=10)
    optimizers = Optimizers(splatseg_trainer_config().optimizers, model.get_param_groups())
    _step_all(model, optimizers)
    opts = optimizers.optimizers
    state = {}
    feats = model.seg_features.detach().clone()

    duplicate_mask = torch.zeros(10, dtype=torch.bool)
    duplicate_mask[[1, 3]] = True
    ops.duplicate(model.gauss_params, opts, state, duplicate_mask)
    assert model.seg_features.shape[0] == model.means.shape[0] == 12
    torch.testing.assert_close(model.seg_features[10:].detach(), feats[[1, 3]])
    assert opts["seg_features"].state[model.seg_features]["exp_avg"].shape == (12, 24)

    split_mask = torch.zeros(12, dtype=torch.bool)
    split_mask[0] = True
    ops.split(model.gauss_params, opts, state, split_mask)
    assert model.seg_features.shape[0] == model.means.shape[0] == 13
    # a split Gaussian's two children keep its feature
    torch.testing.assert_close(model.seg_features[-2:].detach(), feats[[0, 0]])
    assert not torch.equal(model.means[-2], model.means[-1])  # while their positions are resampled

    keep_out = torch.zeros(13, dtype=torch.bool)
    keep_out[:4] = True
    before = model.seg_features[4:].detach().clone()
    ops.remove(model.gauss_params, opts, state, keep_out)
    assert model.seg_features.shape[0] == model.means.shape[0] == 9
    torch.testing.assert_close(model.seg_features.detach(), before)
    assert opts["seg_features"].state[model.seg_features]["exp_avg"].shape == (9, 24)


def test_features_survive_checkpoint_load():
    model = make_model(num_points=20)
    with torch.no_grad():
        model.gauss_params["seg_features"].mul_(3.0)
    state = model.state_dict()
    other = make_model(num_points=5)
    other.load_state_dict(state)
    assert other.num_points == 20
    torch.testing.assert_close(other.seg_features, model.seg_features)
    torch.testing.assert_close(other.means, model.means)


def test_resumed_model_pulls_towards_its_checkpointed_candidates():
    from splatseg_ns.core.segment.global_candidates import GlobalCandidates, two_level_gfl_loss

    model = make_model(num_points=30)
    coarse = torch.nn.functional.normalize(torch.randn(3, 12), dim=-1)
    fine = torch.nn.functional.normalize(torch.randn(5, 24), dim=-1)
    model.set_candidates(GlobalCandidates.from_centers(coarse, fine, 12))
    resumed = make_model(num_points=5)
    assert resumed.candidates is None
    resumed.load_state_dict(model.state_dict())
    assert resumed.candidates is not None
    torch.testing.assert_close(resumed.candidates.coarse.centers, coarse)
    torch.testing.assert_close(resumed.candidates.fine.centers, fine)
    losses = two_level_gfl_loss(resumed.seg_features, resumed.candidates, resumed.config.gfl)
    assert all(torch.isfinite(v) for v in losses.values())
    assert make_model(num_points=5).candidates is None  # a fresh run has none until the first refresh


def test_splatfacto_checkpoint_gets_fresh_features():
    model = make_model(num_points=20)
    state = {k: v for k, v in model.state_dict().items() if "seg_features" not in k}
    other = make_model(num_points=5)
    other.load_state_dict(state, strict=False)
    assert other.seg_features.shape == (20, 24)
    assert torch.isfinite(other.seg_features).all()


def test_feature_stage_renders_only_features_with_frozen_geometry():
    from nerfstudio.cameras.cameras import Cameras

    # num_downscales=1: the render is 16x16 while the masks are 32x32, and the loss must follow the render
    model = make_model(num_points=50, feature_stage_start=0, num_downscales=1)
    model.train()
    camera = Cameras(camera_to_worlds=torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0]]]),
                     fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)
    outputs = model.get_outputs(camera)
    assert "rgb" not in outputs and outputs["seg_features"].shape == (16, 16, 24)
    batch = {"coarse_mask": torch.randint(0, 3, (32, 32)), "fine_mask": torch.randint(0, 5, (32, 32))}
    losses = model.get_loss_dict(outputs, batch)
    sum(losses.values()).backward()
    assert model.seg_features.grad is not None and model.seg_features.grad.abs().sum() > 0
    assert model.means.grad is None and model.features_dc.grad is None
    model.step_post_backward(model.step)  # a features-only run never rendered colour: nothing to release
    model.info = {"means2d": torch.zeros(1, 50, 2)}  # as the last colour step leaves them
    model.strategy_state["grad2d"] = torch.zeros(50)
    model.step_post_backward(model.step)
    assert not model.info and model.strategy_state["grad2d"] is None  # densification's memory is released


def test_feature_stage_loss_terms_and_gfl_once_candidates_exist():
    from nerfstudio.cameras.cameras import Cameras

    from splatseg_ns.core.segment.global_candidates import build_global_candidates

    model = make_model(num_points=80, feature_stage_start=0, num_downscales=0)
    model.config.gfl.start_step = 5
    model.train()
    camera = Cameras(camera_to_worlds=torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0]]]),
                     fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)
    coarse = torch.zeros(32, 32, dtype=torch.long)
    coarse[:, 16:] = 1
    coarse[:, :16] = 2
    fine = coarse.clone()
    fine[:16] += 2
    batch = {"coarse_mask": coarse, "fine_mask": fine}
    model.step = 1
    losses = model.get_loss_dict(model.get_outputs(camera), batch)
    assert {"norm_2d", "norm_3d", "spatial", "contrastive_coarse_pull"} <= set(losses)
    assert not any(k.startswith("gfl") for k in losses)  # no candidates yet, and before GFL's start

    features = model.render_seg_features(camera)
    views = [(features, coarse, fine)] * 4
    model.config.gfl.min_cluster_size_floor = 2
    model.set_candidates(build_global_candidates(views, 12, model.config.gfl))
    assert model.levels["coarse"].centers.shape[0] >= 1 and model.levels["fine"].centers.shape[1] == 24
    model.step = 5
    losses = model.get_loss_dict(model.get_outputs(camera), batch)
    assert {"gfl_coarse_pull", "gfl_coarse_push", "gfl_fine_pull", "gfl_fine_push"} <= set(losses)
    sum(losses.values()).backward()
    assert torch.isfinite(model.seg_features.grad).all()

    # the candidate centres ride in the checkpoint
    state = model.state_dict()
    other = make_model(num_points=5)
    other.load_state_dict(state)
    torch.testing.assert_close(other.levels["fine"].centers, model.levels["fine"].centers)
    assert other.levels["coarse"].centers.shape == model.levels["coarse"].centers.shape


def test_dino_distillation_trains_its_own_feature():
    from nerfstudio.cameras.cameras import Cameras

    model = make_model(num_points=60, feature_stage_start=0, num_downscales=0, dino_feature_dim=8)
    assert "dino_features" in model.get_param_groups()
    Optimizers(splatseg_trainer_config().optimizers, model.get_param_groups())  # it has an optimizer
    model.train()
    camera = Cameras(camera_to_worlds=torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0]]]),
                     fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)
    outputs = model.get_outputs(camera)
    assert outputs["dino_features"].shape == (32, 32, 8)
    batch = {"coarse_mask": torch.ones(32, 32, dtype=torch.long), "fine_mask": torch.ones(32, 32, dtype=torch.long)}
    with pytest.raises(ValueError, match="datamanager.dino True"):
        model.get_loss_dict(outputs, batch)
    batch["dino"] = torch.randn(4, 4, 8)  # patch resolution
    losses = model.get_loss_dict(outputs, batch)
    assert 0 < losses["dino"] <= 2
    sum(losses.values()).backward()
    assert model.gauss_params["dino_features"].grad.abs().sum() > 0


def test_training_stops_before_a_checkpoint_with_nan_features_is_saved():
    """nerfstudio keeps only the latest checkpoint: saving NaN features would destroy the last good one."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

    model = make_feature_stage_model()
    model.step = 1000
    trainer = SimpleNamespace(config=SimpleNamespace(max_num_iterations=3000, steps_per_save=1000), _start_step=0)
    pipeline = SimpleNamespace(datamanager=None)
    callbacks = model.get_training_callbacks(TrainingCallbackAttributes(None, None, pipeline, trainer))
    for callback in callbacks:  # finite features: training goes on
        callback.run_callback_at_location(1000, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    with torch.no_grad():
        model.seg_features[7] = float("nan")
    with pytest.raises(NonFiniteFeaturesError, match=r"1 of 40 Gaussians have NaN/inf .*diverged by step 1000"):
        for callback in callbacks:
            callback.run_callback_at_location(1000, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)


def test_a_checkpoint_with_the_former_flat_level_keys_loads():
    """Runs saved before the per-level state (`candidate_centers_coarse`, `vote_labels_fine`, ...) keep their
    candidates and votes."""
    model = make_model(num_points=20)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("levels.")}
    centers = torch.nn.functional.normalize(torch.randn(4, 12), dim=-1)
    state.update(candidate_centers_coarse=centers, candidate_clip_coarse=torch.randn(4, 8),
                 vote_labels_coarse=torch.arange(20) % 4, vote_share_coarse=torch.rand(20))
    other = make_model(num_points=5)
    other.load_state_dict(state)
    torch.testing.assert_close(other.levels["coarse"].centers, centers)
    assert other.levels["coarse"].clip.shape == (4, 8) and other.has_votes("coarse")
    assert other.levels["fine"].centers.shape == (0, 24) and not other.has_votes("fine")  # absent: empty
    assert set(other.state_dict()) >= {"levels.coarse.centers", "levels.fine.vote_share"}
    assert not any(key.startswith("candidate_") for key in other.state_dict())
