"""1. Memory per Gaussian in training: the real model's state after a colour and a feature step, and a
step's peak at full resolution with a gsplat-shaped stand-in rasteriser."""

from __future__ import annotations

import gc
import time
from typing import Dict, Optional, Sequence, Tuple

import torch

from scale.bytes_count import PeakMemory, tensor_bytes
from scale.synthetic import sam_like_masks


def build_model(num_points: int, dino_dim: int, seed: int = 0):
    from nerfstudio.data.scene_box import SceneBox
    from nerfstudio.engine.optimizers import Optimizers

    from splatseg_ns.method_config import splatseg_trainer_config
    from splatseg_ns.model import SplatsegModelConfig

    generator = torch.Generator().manual_seed(seed)
    points = torch.rand(num_points, 3, generator=generator) * 2 - 1
    colours = torch.randint(0, 256, (num_points, 3), generator=generator, dtype=torch.uint8)
    config = SplatsegModelConfig(num_downscales=0, sh_degree_interval=1, dino_feature_dim=dino_dim)
    model = config.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=1, seed_points=(points, colours)
    )
    model.train()
    optimizers = Optimizers(splatseg_trainer_config().optimizers, model.get_param_groups())
    model.optimizers = optimizers.optimizers
    return model, optimizers


def make_camera(width: int, height: int):
    from nerfstudio.cameras.cameras import Cameras

    camera_to_world = torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.2]]])
    focal = 0.8 * width
    return Cameras(camera_to_worlds=camera_to_world, fx=focal, fy=focal, cx=width / 2, cy=height / 2,
                   width=width, height=height)


def feature_batch(width: int, height: int, dino_shape: Optional[Tuple[int, int, int]], seed: int) -> Dict:
    coarse, fine = sam_like_masks(height, width, 50, 150, seed)
    batch = {"coarse_mask": torch.from_numpy(coarse), "fine_mask": torch.from_numpy(fine)}
    if dino_shape is not None:
        batch["dino"] = torch.randn(*dino_shape)
    return batch


def dino_grid(width: int, height: int) -> Tuple[int, int]:
    """The DINO map's (h, w) for an image: `input_size` at the default resolution, over the patch size."""
    from splatseg_ns.core.extract.dino_features import DinoConfig, input_size

    config = DinoConfig()
    patch = 8 if "patch8" in config.model_name else 16
    h, w = input_size((height, width), config.resolution, patch)
    return h // patch, w // patch


def synthetic_candidates(coarse_dim: int, dim: int, num_coarse: int = 100, num_fine: int = 300):
    """GlobalCandidates with random unit centres (no masks behind them), so that GFL runs in the feature step."""
    from splatseg_ns.core.segment.global_candidates import GlobalCandidates, LevelCandidates

    def level(k: int, d: int) -> LevelCandidates:
        empty = torch.zeros(0, dtype=torch.long)
        return LevelCandidates(centers=torch.nn.functional.normalize(torch.randn(k, d), dim=-1),
                               mask_features=torch.zeros(0, d), mask_labels=empty, mask_views=empty,
                               mask_ids=empty, mask_areas=empty)

    return GlobalCandidates(level(num_coarse, coarse_dim), level(num_fine, dim), coarse_dim, num_views=1)


def fake_rasterizer(info_means2d: torch.Tensor, info_radii: torch.Tensor):
    """A stand-in for gsplat's `rasterization`: renders of the right shape that depend on every input.

    The render is `rand + 0 * sum(inputs)`, so that backward reaches every parameter with a
    gradient of its full size, as gsplat's does; `info` carries the fields the strategy reads,
    allocated once outside the measurement (gsplat's own buffers are in the estimate instead).
    """

    def rasterize(colors, render_mode, sh_degree, absgrad, means, quats, scales, opacities, width, height, **_):
        channels = 3 if sh_degree is not None else colors.shape[-1]
        if render_mode.endswith("D"):
            channels += 1
        tie = sum(t.sum() for t in (means, quats, scales, opacities, colors) if t.requires_grad) * 0.0
        render = torch.rand(1, height, width, channels) + tie
        alpha = torch.rand(1, height, width, 1) + tie
        info = {"means2d": info_means2d, "radii": info_radii, "width": width, "height": height, "n_cameras": 1,
                "gaussian_ids": None}
        return render, alpha, info

    return rasterize


def measured_step(model, camera, batch: Dict, step: int, project_to: Sequence[float]) -> Dict:
    """Peak and end bytes (above what existed before) of forward + losses + backward, the peak
    projected to other Gaussian counts, and the time."""
    for p in model.parameters():
        p.grad = None
    gc.collect()
    model.step = step
    start = time.perf_counter()
    with PeakMemory(model.num_points, project_to) as tracker:
        outputs = model.get_outputs(camera)
        loss = sum(model.get_loss_dict(outputs, batch).values())
        loss.backward()
        del outputs, loss
        gc.collect()
    seconds = time.perf_counter() - start
    result = {"peak": tracker.peak, "end": tracker.current, "end_per_gaussian": tracker.per_gaussian,
              "projected": dict(tracker.projected_peak), "seconds": seconds}
    for p in model.parameters():
        p.grad = None
    gc.collect()
    return result


def gaussian_memory(num_points: int, dino_dim: int, small: Tuple[int, int], full: Tuple[int, int],
                    project_to: Sequence[float]) -> Dict:
    """Everything item 1 and 2 measure for one model size."""
    import splatseg_ns.model as model_module
    from splatseg_ns.core.segment.selection import precompute_click_index

    t0 = time.perf_counter()
    model, optimizers = build_model(num_points, dino_dim)
    n = model.num_points
    out: Dict = {"n": n, "build_s": time.perf_counter() - t0, "groups": {}}
    # losses that sample a fixed number of Gaussians take all of them below that number: there the
    # projection would scale a fixed cost with N
    out["sample_cap"] = max(model.config.spatial_samples, model.config.gfl.max_gaussians or 0)
    groups = {name: [p] for name, p in model.gauss_params.items()}

    # -- a real colour step: grads of geometry and colour, the densification state, model.info
    camera = make_camera(*small)
    colour_step = 10  # full SH degree (interval 1), before the strategy's first refinement (500)
    t0 = time.perf_counter()
    model.step = colour_step
    outputs = model.get_outputs(camera)
    image = torch.rand(small[1], small[0], 3)
    loss = sum(model.get_loss_dict(outputs, {"image": image}).values())
    loss.backward()
    grads = {name: tensor_bytes([p.grad]) for name, p in model.gauss_params.items() if p.grad is not None}
    model.step_post_backward(colour_step)
    info = model.info
    info_tensors = [v for v in info.values() if isinstance(v, torch.Tensor)]
    info_tensors += [getattr(info["means2d"], "grad", None), getattr(info["means2d"], "absgrad", None)]
    out["info_bytes"] = tensor_bytes(info_tensors)
    out["info_fields"] = {k: f"{v.dtype} {list(v.shape)}" for k, v in info.items() if isinstance(v, torch.Tensor)}
    out["strategy"] = {k: tensor_bytes([v]) for k, v in model.strategy_state.items() if isinstance(v, torch.Tensor)}
    optimizers.optimizer_step_all()
    optimizers.zero_grad_all()
    del outputs, loss
    out["colour_step_s"] = time.perf_counter() - t0

    # -- a real feature step: grads of the features, the kNN table of the smoothness term; with
    # candidates (100 coarse, 300 fine) and past GFL's start, so GFL runs as in the last 1000 steps
    t0 = time.perf_counter()
    model.set_candidates(synthetic_candidates(model.config.coarse_feature_dim, model.config.seg_feature_dim))
    feature_step = model.config.feature_stage_start + model.config.gfl.start_step
    model.step = feature_step
    outputs = model.get_outputs(camera)
    batch = feature_batch(*small, (*dino_grid(*small), dino_dim) if dino_dim else None, seed=1)
    loss = sum(model.get_loss_dict(outputs, batch).values())
    loss.backward()
    for name, p in model.gauss_params.items():
        if p.grad is not None:
            grads[name] = max(grads.get(name, 0), tensor_bytes([p.grad]))
    optimizers.optimizer_step_all()
    optimizers.zero_grad_all()
    del outputs, loss
    out["feature_step_s"] = time.perf_counter() - t0
    out["neighbours_bytes"] = tensor_bytes([model._neighbours])
    out["neighbours_dtype"] = f"{model._neighbours.dtype} {list(model._neighbours.shape)}"

    for name, params in groups.items():
        state = optimizers.optimizers[name].state.get(params[0], {})
        out["groups"][name] = {
            "shape": list(params[0].shape),
            "param": tensor_bytes(params),
            "grad": grads.get(name, 0),
            "adam": tensor_bytes(v for v in state.values() if isinstance(v, torch.Tensor)),
            "adam_keys": sorted(state),
        }
    gaussian_ids = {id(p) for p in model.gauss_params.values()}
    other_params = [p for p in model.parameters() if id(p) not in gaussian_ids]
    out["other_fixed"] = tensor_bytes(other_params) + tensor_bytes(model.buffers())
    out["seed_points_bytes"] = tensor_bytes(model.seed_points) if model.seed_points is not None else 0

    # -- the selection tools' per-Gaussian index, per level (100 coarse / 300 fine candidates)
    features = model.seg_features.detach()
    coarse_dim = model.config.coarse_feature_dim
    centers = {"coarse": torch.randn(100, coarse_dim), "fine": torch.randn(300, features.shape[1])}
    out["click_index"] = {}
    for level, c in centers.items():
        f = features[:, :coarse_dim] if level == "coarse" else features
        index = precompute_click_index(f, c)
        out["click_index"][level] = {
            "assignment": tensor_bytes([index.assignment]),
            "similarity": tensor_bytes([index.similarity]),
            "slots": tensor_bytes([index.slots]),
            "unit_centers": tensor_bytes([index.unit_centers]),
            "dtypes": f"{index.assignment.dtype}/{index.similarity.dtype}/{index.slots.dtype}",
        }
        del index

    # -- 2. step peaks at the full image size with the stand-in rasteriser
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    radii = torch.ones(1, n, dtype=torch.int32)
    original = model_module.pick_rasterizer
    model_module.pick_rasterizer = lambda choice, device: fake_rasterizer(means2d, radii)
    try:
        big = make_camera(*full)
        image = torch.randint(0, 256, (full[1], full[0], 3), dtype=torch.uint8)
        out["colour_peak"] = measured_step(model, big, {"image": image}, colour_step, project_to)
        fbatch = feature_batch(*full, (*dino_grid(*full), dino_dim) if dino_dim else None, seed=2)
        if dino_dim:
            out["feature_dino_peak"] = measured_step(model, big, fbatch, feature_step, project_to)
            dino_param = model.gauss_params.pop("dino_features")  # the same model without the DINO feature
        out["feature_peak"] = measured_step(model, big, fbatch, feature_step, project_to)
        if dino_dim:
            model.gauss_params["dino_features"] = dino_param
    finally:
        model_module.pick_rasterizer = original
    del model, optimizers
    gc.collect()
    return out
