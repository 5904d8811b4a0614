"""The nerfstudio glue: registration, config round trip, optimizers, and the feature tensor's bookkeeping."""

from __future__ import annotations

import pytest
import torch
import yaml

from splatseg_ns._torchvision_cpu import install

install()

from gsplat.strategy import ops  # noqa: E402
from nerfstudio.data.scene_box import SceneBox  # noqa: E402
from nerfstudio.engine.optimizers import Optimizers  # noqa: E402

from splatseg_ns.method_config import splatseg_trainer_config  # noqa: E402
from splatseg_ns.model import SplatsegModel, SplatsegModelConfig, world_to_camera  # noqa: E402


def make_model(num_points: int = 64, **overrides) -> SplatsegModel:
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(num_points, 3, generator=generator) * 2 - 1
    colours = torch.randint(0, 256, (num_points, 3), generator=generator, dtype=torch.uint8)
    config = SplatsegModelConfig(**overrides)
    return config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=4,
                        seed_points=(points, colours))


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


def test_seed_colours_initialise_the_colour_without_cuda():
    model = make_model(num_points=16)
    from nerfstudio.models.splatfacto import SH2RGB

    rgb = SH2RGB(model.features_dc)
    expected = model.seed_points[1].float() / 255
    torch.testing.assert_close(rgb, expected, atol=1e-5, rtol=0)
    assert model.seg_features.shape == (16, 24)
    assert model.strategy.refine_stop_iter <= model.config.feature_stage_start


def test_coarse_dim_must_be_smaller_than_feature_dim():
    with pytest.raises(ValueError, match="coarse_feature_dim"):
        make_model(seg_feature_dim=8, coarse_feature_dim=8)


def _step_all(model: SplatsegModel, optimizers: Optimizers) -> None:
    """One optimiser step on every Gaussian parameter, so each has Adam state to carry."""
    loss = sum(p.sum() for p in model.gauss_params.values())
    loss.backward()
    for opt in optimizers.optimizers.values():
        opt.step()
        opt.zero_grad()


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
    from splatseg_ns.core.global_candidates import GlobalCandidates, two_level_gfl_loss

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


def test_resumed_optimizers_step_the_loaded_gaussians():
    """After `--load-dir` the model's tensors are new Parameters of the checkpoint's size; the optimizers
    (built before loading) must step those, with the loaded Adam state, or a resumed run never trains."""
    from splatseg_ns.model import rebind_optimizers

    trained = make_model(num_points=20)
    trained_opt = Optimizers(splatseg_trainer_config().optimizers, trained.get_param_groups())
    sum(p.sum() for p in trained.gauss_params.values()).backward()
    trained_opt.optimizer_step_all()
    resumed = make_model(num_points=5)
    optimizers = Optimizers(splatseg_trainer_config().optimizers, resumed.get_param_groups())  # nerfstudio's order:
    resumed.load_state_dict(trained.state_dict())  # optimizers first, then the checkpoint
    optimizers.load_optimizers({k: v.state_dict() for k, v in trained_opt.optimizers.items()})
    rebind_optimizers(optimizers.optimizers, resumed.get_gaussian_param_groups())
    before = {k: v.detach().clone() for k, v in resumed.gauss_params.items()}
    sum(p.sum() for p in resumed.gauss_params.values()).backward()
    optimizers.optimizer_step_all()
    for name, value in resumed.gauss_params.items():
        assert not torch.equal(value, before[name]), f"{name} did not train after resuming"
        state = optimizers.optimizers[name].state[value]
        assert state["exp_avg"].shape == value.shape and int(state["step"]) == 2  # the loaded Adam state went on


class _Trainer:
    def __init__(self, start, total):
        self._start_step = start
        self.config = type("C", (), {"max_num_iterations": total})()


def test_resume_trains_up_to_max_iterations_not_that_many_more():
    from splatseg_ns.model import finish_at_max_iterations

    fresh, resumed = _Trainer(0, 400), _Trainer(134, 400)
    finish_at_max_iterations(fresh)
    finish_at_max_iterations(resumed)
    assert fresh.config.max_num_iterations == 400
    assert resumed.config.max_num_iterations == 266  # nerfstudio's loop: range(134, 134 + 266) ends at 399
    with pytest.raises(ValueError, match="Raise --max-num-iterations"):
        finish_at_max_iterations(_Trainer(400, 400))


def test_splatfacto_checkpoint_gets_fresh_features():
    model = make_model(num_points=20)
    state = {k: v for k, v in model.state_dict().items() if "seg_features" not in k}
    other = make_model(num_points=5)
    other.load_state_dict(state, strict=False)
    assert other.seg_features.shape == (20, 24)
    assert torch.isfinite(other.seg_features).all()


def test_world_to_camera_inverts_the_pose():
    c2w = torch.eye(4)[:3].clone()
    c2w[:, 3] = torch.tensor([1.0, 2.0, 3.0])
    viewmat = world_to_camera(c2w[None])[0]
    # the camera centre maps to the origin, and a point in front (-Z in OpenGL) has positive depth
    centre = torch.tensor([1.0, 2.0, 3.0, 1.0])
    torch.testing.assert_close(viewmat @ centre, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    ahead = torch.tensor([1.0, 2.0, 2.0, 1.0])
    assert (viewmat @ ahead)[2] > 0


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

    from splatseg_ns.core.global_candidates import build_global_candidates

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
    assert model.candidate_centers_coarse.shape[0] >= 1 and model.candidate_centers_fine.shape[1] == 24
    model.step = 5
    losses = model.get_loss_dict(model.get_outputs(camera), batch)
    assert {"gfl_coarse_pull", "gfl_coarse_push", "gfl_fine_pull", "gfl_fine_push"} <= set(losses)
    sum(losses.values()).backward()
    assert torch.isfinite(model.seg_features.grad).all()

    # the candidate centres ride in the checkpoint
    state = model.state_dict()
    other = make_model(num_points=5)
    other.load_state_dict(state)
    torch.testing.assert_close(other.candidate_centers_fine, model.candidate_centers_fine)
    assert other.candidate_centers_coarse.shape == model.candidate_centers_coarse.shape


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
