"""Every option of splatfacto's config either changes what splatseg does, as in splatfacto, or is refused at start.

The table names each `SplatfactoModelConfig` field with a probe that fails if the option were ignored; a field
nerfstudio adds fails `test_every_splatfacto_option_is_covered` until it gets one.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModelConfig

from splatseg_ns.model import UNUSED_MODEL_OPTIONS
from tests.helpers import make_model


def _camera(with_index: bool = False) -> Cameras:
    return Cameras(camera_to_worlds=torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3.0]]]), fx=30.0, fy=30.0,
                   cx=16.0, cy=16.0, width=32, height=32, metadata={"cam_idx": 0} if with_index else None)


def _model(**options):
    torch.manual_seed(0)
    model = make_model(num_points=80, **{"num_downscales": 0, **options})
    with torch.no_grad():  # colour that depends on the view direction, so the SH schedule shows
        model.gauss_params["features_rest"].normal_(0, 0.3)
        model.gauss_params["scales"].fill_(-2.5)
        model.gauss_params["opacities"].fill_(1.0)
    return model


def _train_outputs(model, step: int = 0, camera: Cameras = None):
    model.train()
    model.step = step
    model.optimizers = getattr(model, "optimizers", {})  # the trainer's callbacks set them; the strategy takes them
    return model.get_outputs(camera or _camera())


def _eval_rgb(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.get_outputs(_camera())["rgb"]


def _loss(model, step: int = 0, **options):
    outputs = _train_outputs(model, step)
    image = torch.rand(32, 32, 3, generator=torch.Generator().manual_seed(1))
    return model.get_loss_dict(outputs, {"image": image})


STRATEGY = {  # option -> (value, DefaultStrategy field, the value it must take)
    "cull_alpha_thresh": (0.3, "prune_opa", 0.3),
    "densify_grad_thresh": (0.002, "grow_grad2d", 0.002),
    "densify_size_thresh": (0.05, "grow_scale3d", 0.05),
    "split_screen_size": (0.2, "grow_scale2d", 0.2),
    "cull_scale_thresh": (0.9, "prune_scale3d", 0.9),
    "cull_screen_size": (0.4, "prune_scale2d", 0.4),
    "stop_screen_size_at": (123, "refine_scale2d_stop_iter", 123),
    "warmup_length": (77, "refine_start_iter", 77),
    "stop_split_at": (456, "refine_stop_iter", 456),
    "reset_alpha_every": (7, "reset_every", 700),
    "refine_every": (50, "refine_every", 50),
    "use_absgrad": (False, "absgrad", False),
}


@pytest.mark.parametrize("option", sorted(STRATEGY))
def test_densification_options_reach_the_strategy(option):
    value, field, expected = STRATEGY[option]
    default = getattr(make_model().strategy, field)
    assert getattr(make_model(**{option: value}).strategy, field) == expected != default


def test_densification_stops_before_the_feature_stage():
    assert make_model(stop_split_at=15000, feature_stage_start=900).strategy.refine_stop_iter == 900


def _differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape != b.shape or not torch.allclose(a, b, atol=1e-4)


def probe_background_color():
    assert _differs(_eval_rgb(_model(background_color="black")), _eval_rgb(_model(background_color="white")))


def probe_num_downscales():
    assert _train_outputs(_model(num_downscales=1))["rgb"].shape == (16, 16, 3)
    assert _train_outputs(_model())["rgb"].shape == (32, 32, 3)


def probe_resolution_schedule():
    assert _train_outputs(make_model(num_downscales=1, resolution_schedule=10), step=20)["rgb"].shape == (32, 32, 3)
    assert _train_outputs(make_model(num_downscales=1, resolution_schedule=3000), step=20)["rgb"].shape == (16, 16, 3)


def probe_sh_degree():
    assert _model(sh_degree=1).gauss_params["features_rest"].shape[1] == 3
    # the same seed colours either way; from step sh_degree_interval on, degree 1 adds view dependence
    assert _differs(_train_outputs(_model(sh_degree=0), step=1000)["rgb"],
                    _train_outputs(_model(sh_degree=1), step=1000)["rgb"])


def probe_sh_degree_interval():
    fast, slow = _model(sh_degree_interval=1), _model(sh_degree_interval=1000)
    assert _differs(_train_outputs(fast, step=5)["rgb"], _train_outputs(slow, step=5)["rgb"])


def probe_rasterize_mode():
    assert _differs(_eval_rgb(_model(rasterize_mode="antialiased")), _eval_rgb(_model(rasterize_mode="classic")))


def probe_output_depth_during_training():
    assert _train_outputs(_model(output_depth_during_training=True))["depth"] is not None
    assert _train_outputs(_model())["depth"] is None


def probe_use_bilateral_grid():
    model = _model(use_bilateral_grid=True)
    before = _train_outputs(model, camera=_camera(with_index=True))["rgb"].detach()
    with torch.no_grad():
        for grid in model.bil_grids.parameters():
            grid.add_(0.3 * torch.randn_like(grid))
    assert _differs(_train_outputs(model, camera=_camera(with_index=True))["rgb"], before)
    assert "bilateral_grid" in model.get_param_groups() and "bilateral_grid" not in _model().get_param_groups()


def probe_grid_shape():
    grids = [p for p in _model(use_bilateral_grid=True, grid_shape=(4, 4, 2)).bil_grids.parameters()][0]
    assert tuple(grids.shape[-3:]) == (2, 4, 4)


def probe_ssim_lambda():
    assert _differs(_loss(_model(ssim_lambda=0.9))["main_loss"], _loss(_model(ssim_lambda=0.0))["main_loss"])


def _elongated(**options):
    model = _model(**options)
    with torch.no_grad():
        model.gauss_params["scales"][:, 0] = 0.5  # 20 times longer than wide
    return model


def probe_use_scale_regularization():
    assert _loss(_elongated(use_scale_regularization=True))["scale_reg"] > 0 == _loss(_elongated())["scale_reg"]


def probe_max_gauss_ratio():
    model = _elongated(use_scale_regularization=True)
    low = _loss(model)["scale_reg"]
    model.config.max_gauss_ratio = 2.0
    assert _loss(model)["scale_reg"] > low


def probe_camera_optimizer():
    from nerfstudio.cameras.camera_optimizers import CameraOptimizerConfig

    model = _model(camera_optimizer=CameraOptimizerConfig(mode="SO3xR3"))
    assert "camera_opt" in model.get_param_groups()
    before = _train_outputs(model, camera=_camera(with_index=True))["rgb"].detach()
    with torch.no_grad():
        model.camera_optimizer.pose_adjustment.add_(0.05)
    assert _differs(_train_outputs(model, camera=_camera(with_index=True))["rgb"], before)


def probe_color_corrected_metrics():
    model = _model(color_corrected_metrics=True)
    model.eval()
    with torch.no_grad():
        outputs = model.get_outputs(_camera())
    metrics, _ = model.get_image_metrics_and_images(outputs, {"image": torch.rand(32, 32, 3)})
    assert "cc_psnr" in metrics


def probe_random_init():
    assert make_model(num_points=20, random_init=True, num_random=33).num_points == 33


def probe_num_random():
    assert make_model(random_init=True, num_random=12).num_points == 12


def probe_random_scale():
    means = make_model(random_init=True, num_random=500, random_scale=100.0).means
    assert means.abs().max() > 20 > make_model(random_init=True, num_random=500, random_scale=10.0).means.abs().max()


def probe_n_split_samples():
    with pytest.raises(ValueError, match="--pipeline.model.n-split-samples 3: nerfstudio 1.1.5's splatfacto ignores"):
        make_model(n_split_samples=3)


@pytest.mark.parametrize("option, value", [("enable_collider", False), ("collider_params", {"near_plane": 0.5}),
                                           ("loss_coefficients", {"rgb_loss_coarse": 2.0}),
                                           ("eval_num_rays_per_chunk", 64), ("prompt", "a mug")])
def test_options_splatfacto_never_reads_are_refused(option, value):
    with pytest.raises(ValueError, match=rf"--pipeline.model.{option.replace('_', '-')} .*splatfacto does not use it"):
        make_model(**{option: value})


UNUSED = set(UNUSED_MODEL_OPTIONS)
PROBES = {name[len("probe_"):]: probe for name, probe in globals().items() if name.startswith("probe_")}


@pytest.mark.parametrize("option", sorted(PROBES))
def test_the_option_changes_what_splatseg_does_or_is_refused(option):
    PROBES[option]()


def test_every_splatfacto_option_is_covered():
    fields = {f.name for f in dataclasses.fields(SplatfactoModelConfig)} - {"_target"}
    covered = set(STRATEGY) | set(PROBES) | UNUSED
    assert fields == covered, fields ^ covered
