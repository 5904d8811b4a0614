"""The model's gsplat (CUDA) branch, run on CPU through `testing.gsplat_standin`: every call is bound to the
installed `gsplat.rasterization` and checked like gsplat checks it, so a wrong argument fails here, not on a GPU.

One short in-process `ns-train splatseg --pipeline.model.rasterizer gsplat`: colour steps with splatfacto's
densification (gsplat's DefaultStrategy reads the returned `info`), feature steps with GFL, the votes at the
last step; then the loaded run's click, the viewer's render and an export, all through the stand-in.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splatseg_ns.testing.gsplat_standin import GsplatStandIn, install, tile_intersections

COLOUR_STEPS, FEATURE_STEPS = 100, 20


@pytest.fixture()
def stand_in(monkeypatch) -> GsplatStandIn:
    return install(monkeypatch)


def _scene(N=30, C=1, sh_degree=None):
    g = torch.Generator().manual_seed(0)
    means = torch.randn(N, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, 3.0])
    colors = torch.rand(N, 3, generator=g) if sh_degree is None else torch.randn(N, (sh_degree + 1) ** 2, 3, generator=g)
    return dict(means=means, quats=torch.randn(N, 4, generator=g), scales=torch.full((N, 3), 0.05),
                opacities=torch.full((N,), 0.8), colors=colors, viewmats=torch.eye(4).repeat(C, 1, 1),
                Ks=torch.tensor([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]]).repeat(C, 1, 1), width=32, height=32)


@pytest.mark.parametrize(
    "change, error",
    [
        (dict(colour=None), TypeError),  # a misspelt argument
        (dict(sh_degree=3), AssertionError),  # plain colours given as SH coefficients
        (dict(render_mode="RGBD"), AssertionError),
        (dict(rasterize_mode="aa"), AssertionError),
        (dict(camera_model="equirect"), AssertionError),
        (dict(absgrad=True, distributed=True), AssertionError),
        (dict(backgrounds=torch.ones(1, 4)), AssertionError),
        (dict(width=torch.tensor(32)), TypeError),
        (dict(packed=1), TypeError),
    ],
)
def test_a_wrong_call_is_rejected(stand_in, change, error):
    with pytest.raises(error):
        stand_in(**{**_scene(), **change})
    assert not stand_in.calls


def test_a_wrong_dtype_or_shape_is_rejected(stand_in):
    scene = _scene()
    with pytest.raises(TypeError, match="float32"):
        stand_in(**{**scene, "means": scene["means"].double()})
    with pytest.raises(AssertionError):
        stand_in(**{**scene, "opacities": scene["opacities"][:, None]})  # [N, 1] instead of [N]
    with pytest.raises(AssertionError):
        stand_in(**{**_scene(sh_degree=1), "sh_degree": 2})  # more bands than the coefficients hold
    with pytest.raises(TypeError):
        stand_in(*_scene().values(), 0.01, 1e10, 0.0, 0.3, None, True, 16, None, "RGB", False, False, "classic", 32,
                 False, "pinhole", None, "one too many")


@pytest.mark.parametrize("packed", [False, True])
def test_info_has_gsplat_keys_shapes_and_tile_intersections(stand_in, packed):
    scene = _scene(N=40, C=2, sh_degree=1)
    scene["viewmats"][1, 0, 3] = 0.3
    scene["means"].requires_grad_()
    colors, alphas, info = stand_in(**scene, sh_degree=1, packed=packed, render_mode="RGB+ED")
    assert colors.shape == (2, 32, 32, 4) and alphas.shape == (2, 32, 32, 1)
    expected = {"camera_ids", "gaussian_ids", "radii", "means2d", "depths", "conics", "opacities", "tile_width",
                "tile_height", "tiles_per_gauss", "isect_ids", "flatten_ids", "isect_offsets", "width", "height",
                "tile_size", "n_cameras"}
    assert set(info) == expected
    lead = (int((info["radii"] > 0).sum()),) if packed else (2, 40)
    assert info["radii"].shape == lead and info["radii"].dtype == torch.int32
    assert info["means2d"].shape == (*lead, 2) and info["means2d"].requires_grad
    assert info["conics"].shape == (*lead, 3) and info["depths"].shape == lead
    assert info["tiles_per_gauss"].shape == lead and info["tiles_per_gauss"].dtype == torch.int32
    assert (info["gaussian_ids"] is not None) == packed
    assert info["isect_offsets"].shape == (2, 2, 2) and info["isect_offsets"].dtype == torch.int32
    assert info["flatten_ids"].dtype == torch.int32 and info["isect_ids"].dtype == torch.int64
    assert info["isect_ids"].numel() == int(info["tiles_per_gauss"].sum()) > 0
    assert torch.all(info["isect_ids"][1:] >= info["isect_ids"][:-1])  # sorted by (camera, tile, depth)


def test_tile_intersections_follow_gsplats_rule():
    """One Gaussian at pixel (20, 5), radius 6, on a 32x32 image of 16 px tiles: tiles x 0..1, y 0..0."""
    info = {"tile_size": 16, "tile_width": 2, "tile_height": 2, "n_cameras": 1,
            "radii": torch.tensor([[6, 0]], dtype=torch.int32), "means2d": torch.tensor([[[20.0, 5.0], [3.0, 3.0]]]),
            "depths": torch.tensor([[2.0, 1.0]])}
    out = tile_intersections(info, packed=False)
    assert out["tiles_per_gauss"].tolist() == [[2, 0]]
    assert ((out["isect_ids"] >> 32) & 0xF).tolist() == [0, 1]  # tiles 0 and 1 of camera 0
    assert out["flatten_ids"].tolist() == [0, 0]
    assert out["isect_offsets"].tolist() == [[[0, 1], [2, 2]]]


def _train_in_process(data: Path, output_dir: Path) -> Path:
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.scripts.train import main

    from splatseg_ns.tools.demo import demo_train_args

    args = demo_train_args(data, output_dir, colour_steps=COLOUR_STEPS, feature_steps=FEATURE_STEPS,
                           timestamp="gsplat")
    args += ["--pipeline.model.rasterizer", "gsplat", "--pipeline.model.warmup-length", "10",
             "--pipeline.model.refine-every", "10", "--pipeline.model.gfl.min-cluster-size-floor", "2"]
    main(tyro.cli(AnnotatedBaseConfigUnion, args=args))
    return output_dir / "demo" / "splatseg" / "gsplat" / "config.yml"


def test_training_clicking_viewing_and_exporting_through_gsplats_call(stand_in, tmp_path):
    from splatseg_ns.core.io.ply import read_gaussians_ply
    from splatseg_ns.scenes.demo_scene import write_demo_scene
    from splatseg_ns.tools.export import export_selection
    from splatseg_ns.tools.make_benchmark import deepest_pixel, object_masks
    from splatseg_ns.tools.select import select_by_view_clicks
    from splatseg_ns.trained_run import TrainedRun

    data = write_demo_scene(tmp_path / "scene", num_views=8, resolution=32)
    config = _train_in_process(data, tmp_path / "outputs")

    colour = [c for c in stand_in.calls if c["sh_degree"] is not None]
    features = [c for c in stand_in.calls if c["sh_degree"] is None and c["colors"].shape[-1] == 24]
    assert len(colour) == COLOUR_STEPS and all(c["absgrad"] for c in colour)  # splatfacto's use_absgrad
    assert len({c["means"].shape[0] for c in colour}) > 1, "densification never changed the Gaussians"
    assert len(features) >= FEATURE_STEPS  # + GFL's and the votes' renders
    assert any(c["colors"].requires_grad and not c["means"].requires_grad for c in features)  # frozen geometry

    run = TrainedRun(config)
    model = run.model
    assert model.config.rasterizer == "gsplat" and model.has_votes("coarse") and model.has_votes("fine")
    view_name = "frame_00001.png"
    masks = object_masks(data, data / "images" / view_name, "coarse")
    largest = max(masks.values(), key=lambda m: m.sum())
    stand_in.calls.clear()
    selection = select_by_view_clicks(run, view_name, [tuple(deepest_pixel(largest))])
    assert selection.indices

    panel = model.splatseg
    panel.bind(run.config_path, run.pipeline)
    view = run.view(view_name)
    assert panel.click_pixel(view.camera, *deepest_pixel(largest))
    panel._show.value = "selection only"
    shown = panel.render(view.camera)
    panel._show.value = "everything"
    assert stand_in.calls and shown["rgb"].shape == (*view.size[::-1], 3)
    assert (shown["accumulation"] < run.render(view)["accumulation"] - 0.05).any()  # the rest is hidden

    written = export_selection(run, selection, tmp_path / "sel.json", tmp_path / "object.ply").written
    assert 0 < written <= len(selection.indices)
    assert read_gaussians_ply(tmp_path / "object.ply")["x"].shape[0] == written
