"""Scale: memory per Gaussian and mask-cache bytes per image, measured; a plan for 3M Gaussians and 1,000 images.

Everything below "measured" is summed over the real objects (`numel * element_size`, views counted
once per storage), on whatever device this runs on (a CPU is enough):

1. Memory per Gaussian while training. Builds the real `SplatsegModel` (seed points in a cube, SH
   degree 3, 24 segmentation channels, a `--dino-dim` DINO feature) with nerfstudio's `Optimizers`
   from `method_config`'s optimizer configs, runs one real colour step (the model's rasteriser,
   gsplat's `DefaultStrategy` updating its running state) and one real feature step (contrastive,
   norm, spatial smoothness, GFL against synthetic candidates and DINO losses) at a small
   resolution, and then sums parameters, gradients, Adam state (exp_avg, exp_avg_sq), the
   strategy's state (grad2d, count, radii), what
   the model keeps between steps (`model.info`, the kNN table of the smoothness term) and the
   selection tools' `ClickIndex` per level. Two sizes, to check that bytes grow linearly with N.
2. Peak memory of one training step above the persistent state, at the full image size
   (`--step-resolution`, default 1920x1080), with the rasteriser replaced by a stand-in that
   returns gsplat-shaped renders (so no GPU is needed): gradients, the per-pixel activations of
   the losses (L1 + SSIM; contrastive on sampled pixels; DINO pooling) and the per-Gaussian ones
   of the model code (e.g. the SH coefficient concatenation), tracked op by op by a dispatch mode
   that adds each new tensor storage and subtracts it when it is freed; the timeline is projected
   to the plan's N by scaling its per-Gaussian storages.
   gsplat's own buffers (projection, tile intersections, per-pixel kernel state) cannot be measured
   without CUDA: they are an ESTIMATE read off gsplat 1.4.0's code, printed with its assumptions.
3. Mask-cache bytes per image. Writes entries through the real cache (`cache.extract_all`, so
   `FeatureCache.write`, `npz_bytes`, manifests): SAM-like two-level maps (warped-Voronoi
   "blobby" segments made at SAM's working size and resized nearest to the image, as
   `SamMasks.__call__` does; coarse segments with ~10% unmasked, fine segments nested in them),
   the real `dino_extractor` (ViT-S/8 architecture with random weights, scene PCA fit) and the real
   `clip_extractor` (a random-weight open_clip model with ViT-B-16's 512-d embeddings). Then the
   bytes per image the datamanager keeps in RAM for the cached batch, through the same loaders and
   conversions `SplatsegDataManager._attach_masks` uses, cross-checked on the real datamanager
   with the demo scene.
4. The plan: 3M Gaussians at 1080p against a 24 GB GPU, a 1,000-image cache on disk and in RAM.

Run it single-threaded beside other work: TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 (about 2 minutes, 4.2 GB
of RAM on a CPU; the sizes must stay above the 100k Gaussians the spatial and GFL terms sample per step).

    python benchmarks/bench_scale.py                               # 120k and 360k Gaussians, 3 image sizes
    python benchmarks/bench_scale.py --quick                       # 110k and 220k Gaussians, 2 image sizes
    python benchmarks/bench_scale.py --sizes 120000 360000 --cache-images 2 --tiles-per-gaussian 10
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import resource
import tempfile
import time
import weakref
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from splatseg_ns._torchvision_cpu import install

install()

MB = 1e6
GB = 1e9
TODAY = "2026-11-21"


# ----------------------------------------------------------------------------------------------
# Counting bytes
# ----------------------------------------------------------------------------------------------


def tensor_bytes(tensors: Iterable[Optional[torch.Tensor]]) -> int:
    """Bytes of the distinct storages behind `tensors` (a view or an expand counts its storage once)."""
    seen: Dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class PeakMemory(TorchDispatchMode):
    """Peak bytes of the tensor storages created while active, freed ones subtracted (any device).

    Every op's outputs whose storage is not one of its inputs' (views and in-place results share
    theirs) are added when created and subtracted by a weak-reference callback when freed, so
    `peak` is the high-water mark of memory allocated inside the block above what existed before.
    Autograd's backward runs through the mode too (gradients, saved-tensor unpacking).

    With `num_gaussians`, a storage whose tensor has N rows ([N, ...] or [1, N, ...]) counts as
    per-Gaussian and the rest as per-image; `projected_peak[M]` is then the high-water mark of the
    same timeline with every per-Gaussian storage scaled to M Gaussians. (The peak of a step is a
    maximum over time, of per-pixel temporaries early and per-Gaussian gradients late, so a line
    through two measured peaks would not extrapolate; the scaled timeline does.)
    """

    def __init__(self, num_gaussians: Optional[int] = None, project_to: Sequence[float] = ()):
        super().__init__()
        self.live: Dict[int, Tuple[int, bool, weakref.ref]] = {}
        self.n = num_gaussians
        self.current = 0
        self.peak = 0
        self.per_gaussian = 0  # bytes of live per-Gaussian storages
        self.per_gaussian_at_end = 0
        self.projected_peak = {m: 0.0 for m in project_to}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                size = storage.nbytes()
                if key in inputs or key in self.live or size == 0:
                    continue
                shape = tuple(t.shape)
                gaussian = self.n is not None and len(shape) >= 1 and (
                    shape[0] == self.n or (len(shape) >= 2 and shape[0] == 1 and shape[1] == self.n))
                self.live[key] = (size, gaussian, weakref.ref(storage, lambda _, k=key: self._free(k)))
                self.current += size
                self.per_gaussian += size if gaussian else 0
                self.peak = max(self.peak, self.current)
                other = self.current - self.per_gaussian
                for m in self.projected_peak:
                    self.projected_peak[m] = max(self.projected_peak[m], other + self.per_gaussian * m / self.n)
        return out

    def _free(self, key: int) -> None:
        size, gaussian, _ = self.live.pop(key, (0, False, None))
        self.current -= size
        self.per_gaussian -= size if gaussian else 0


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------------------------
# Synthetic SAM-like masks and images
# ----------------------------------------------------------------------------------------------


def _smooth_field(h: int, w: int, cells: int, rng: np.random.Generator) -> np.ndarray:
    import cv2

    small = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def blobby_two_level(
    h: int, w: int, num_coarse: int, num_fine: int, rng: np.random.Generator, unmasked: float = 0.1
) -> Tuple[np.ndarray, np.ndarray]:
    """(coarse, fine) int32 [h, w] id maps like SAM's two levels: wavy, blob-shaped segments.

    Coarse: a Voronoi tessellation of `num_coarse` seeds over domain-warped coordinates (smooth
    noise at three scales, the finest roughening edges by a few pixels), a fraction `unmasked` of
    its cells set to 0 (no mask). Fine: `num_fine`
    seeds (at least one per coarse segment) each claim the nearest pixels of their own coarse
    segment, so fine segments nest in coarse ones.
    """
    from scipy.spatial import cKDTree

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    side = max(h, w)
    octaves = ((3, 0.10), (9, 0.03), (max(4, side // 12), 0.003))  # shape, wobble, ragged edges (~3 px)
    wy, wx = (sum(a * _smooth_field(h, w, cells, rng) for cells, a in octaves) * side for _ in range(2))
    points = np.stack([(yy + wy).ravel(), (xx + wx).ravel()], axis=1)
    # seeds denser in places, so segment sizes spread out (a few large, many small)
    # seeds are pixels (so every cell keeps at least its own), half of them crowded around a few centres
    centres = rng.random((4, 2)) * [h, w]
    crowded = centres[rng.integers(0, 4, num_coarse // 2)] + rng.normal(0, 0.08 * side, (num_coarse // 2, 2))
    crowded = np.clip(np.round(crowded), 0, [h - 1, w - 1]).astype(np.int64)
    spread = np.stack([rng.integers(0, h, num_coarse - len(crowded)), rng.integers(0, w, num_coarse - len(crowded))], 1)
    seed_pixels = np.unique(np.concatenate([spread, crowded]) @ np.array([w, 1]))
    _, coarse = cKDTree(points[seed_pixels]).query(points, workers=1)
    coarse = coarse.astype(np.int32) + 1
    num_cells = len(seed_pixels)
    drop = rng.choice(np.arange(1, num_cells + 1), max(1, int(round(unmasked * num_cells))), replace=False)
    coarse[np.isin(coarse, drop)] = 0
    present = np.unique(coarse[coarse > 0])
    remap = np.zeros(num_cells + 1, np.int32)
    remap[present] = np.arange(1, len(present) + 1)
    coarse = remap[coarse]
    masked = np.flatnonzero(coarse > 0)
    first = np.array([rng.choice(np.flatnonzero(coarse == c)) for c in range(1, len(present) + 1)])
    extra = rng.choice(masked, max(0, num_fine - len(first)), replace=False)
    fine_seeds = np.concatenate([first, extra])
    big = 10.0 * side  # a coarse id apart is farther than any pixel: seeds only claim their own segment
    with_label = np.concatenate([points, big * coarse[:, None].astype(np.float32)], axis=1)
    _, nearest = cKDTree(with_label[fine_seeds]).query(with_label[masked], workers=1)
    fine = np.zeros(h * w, np.int32)
    fine[masked] = nearest.astype(np.int32) + 1
    return coarse.reshape(h, w), fine.reshape(h, w)


def sam_like_masks(h: int, w: int, num_coarse: int, num_fine: int, seed: int, max_side: int = 1024):
    """Maps made at SAM's working size (`SamMaskConfig.max_side`) and resized nearest to (h, w), as SAM's are."""
    from splatseg_ns.core.io.images import resize_nearest

    rng = np.random.default_rng(seed)
    s = min(1.0, max_side / max(h, w))
    sh, sw = max(1, round(h * s)), max(1, round(w * s))
    coarse, fine = blobby_two_level(sh, sw, num_coarse, num_fine, rng)
    if (sh, sw) != (h, w):
        coarse, fine = resize_nearest(coarse, (h, w)), resize_nearest(fine, (h, w))
    return coarse, fine


def synthetic_image(fine: np.ndarray, seed: int) -> np.ndarray:
    """RGB uint8: a colour per fine segment, smooth shading and sensor-like noise."""
    rng = np.random.default_rng(seed)
    h, w = fine.shape
    palette = rng.integers(30, 226, (int(fine.max()) + 1, 3)).astype(np.float32)
    shade = 1.0 + 0.25 * _smooth_field(h, w, 4, rng)[..., None]
    image = palette[fine] * shade + rng.normal(0, 4, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# 1. Memory per Gaussian in training
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# 2. gsplat's buffers (estimate)
# ----------------------------------------------------------------------------------------------


def padded(channels: int) -> int:
    """Channels gsplat 1.4.0 renders for `channels` (cuda/_wrapper.py rasterize_to_pixels pads to a supported count)."""
    supported = (1, 2, 3, 4, 5, 8, 9, 16, 17, 32, 33, 64, 65, 128, 129, 256, 257, 512, 513)
    return channels if channels in supported else 1 << (channels - 1).bit_length()


def gsplat_estimate(stage: str, seg_dim: int, dino_dim: int) -> Dict[str, float]:
    """ESTIMATE of gsplat 1.4.0's own buffers for one camera, unpacked (splatseg passes packed=False).

    Bytes per Gaussian (projection outputs kept from forward to backward, and their gradients), per
    tile intersection and per pixel (kernel state beyond the render and its gradient, which the
    measured step already holds). Read off rendering.py (`rasterization`) and cuda/_wrapper.py
    (`fully_fused_projection`, `isect_tiles`, `rasterize_to_pixels`); nothing here ran on a GPU.
    Intersections: isect_ids int64 + flatten_ids int32 = 12 B, 24 B while the radix sort's double
    buffer exists; `rasterization` returns them in its meta, which splatfacto keeps as `model.info`
    until the next colour step, so the previous colour step's 12 B stay alive through every step.
    """
    # fully_fused_projection: radii int32 4, means2d 8, depths 4, conics 12; opacities.repeat(C, 1) 4;
    # isect_tiles' tiles_per_gauss int32 4; backward: v_means2d 8, v_conics 12, v_opacities 4.
    projection = 4 + 8 + 4 + 12 + 4 + 4 + 8 + 12 + 4
    if stage == "colour":
        # SH: dirs [C,N,3] 12, SH output 12, +0.5 12, clamp 12; v_colors 12; v_coeffs [C,N,16,3] 192
        # (before the cat's backward slices it into the parameter gradients); absgrad (splatfacto's
        # use_absgrad=True) 8. Intersections: this step's while sorting + the previous step's in
        # model.info. Per pixel: last_ids int32 4.
        return {"per_gaussian": projection + 48 + 12 + 192 + 8, "per_isect": 24 + 12, "per_pixel": 4, "renders": 1}
    per_g, per_px, renders = 0, 0, 0
    for channels in [seg_dim] + ([dino_dim] if dino_dim else []):
        # each feature render is its own rasterization() call: its own projection and intersections
        chunks = math.ceil(channels / 32)  # rendering.py: channel_chunk=32
        width = padded(min(channels, 32))
        # per Gaussian: colours padded (torch.cat with zeros) or sliced into contiguous chunks, saved,
        # and v_colors of the same width per chunk
        per_g += projection + chunks * width * 4 * 2
        if chunks == 1:  # the padding of the render and of its gradient (slice backward), last_ids
            per_px += 2 * (width - channels) * 4 + 4
        else:  # per chunk last_ids, an alpha beyond the first, the chunk renders / contiguous grads (128 B each)
            per_px += chunks * 4 + (chunks - 1) * 4 + chunks * width * 4
        renders += 1
    # intersections: every render's 12 B kept to backward, the last one's doubled while sorting,
    # and the last colour step's 12 B still in model.info
    per_isect = 12 * (renders - 1) + 24 + 12
    return {"per_gaussian": per_g, "per_isect": per_isect, "per_pixel": per_px, "renders": renders}


# ----------------------------------------------------------------------------------------------
# 3. The mask cache, bytes per image
# ----------------------------------------------------------------------------------------------


def cache_bytes(sizes: Sequence[Tuple[int, int]], images_per_size: int, num_coarse: int, num_fine: int,
                with_models: bool = True) -> List[Dict]:
    """Write real cache entries for synthetic images; bytes on disk and in the datamanager's RAM per image."""
    from PIL import Image

    from splatseg_ns.core.extract import cache as cache_module
    from splatseg_ns.core.extract import extractors as extractors_module
    from splatseg_ns.core.extract.clip_embeddings import ClipConfig
    from splatseg_ns.core.extract.dino_features import DinoConfig, load_dino
    from splatseg_ns.core.extract.extraction import extract_all
    from splatseg_ns.testing.tiny_models import TINY_CLIP_CONFIG

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "scene"
        (data_dir / "images").mkdir(parents=True)
        maps: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        paths: List[Path] = []
        seed = 0
        for w, h in sizes:
            for k in range(images_per_size):
                seed += 1
                coarse, fine = sam_like_masks(h, w, num_coarse, num_fine, seed)
                path = data_dir / "images" / f"{w}x{h}_{k}.png"
                Image.fromarray(synthetic_image(fine, seed)).save(path, compress_level=1)
                maps[path.name] = (coarse, fine)
                paths.append(path)

        def compute_masks(image, image_path):  # what sam_extractor's compute returns, from the synthetic maps
            coarse, fine = maps[Path(image_path).name]
            dtype = np.uint16 if max(coarse.max(), fine.max()) < 65536 else np.int32
            return {"coarse": coarse.astype(dtype), "fine": fine.astype(dtype)}

        extractors = [extractors_module.Extractor(cache_module.MASKS, "sam", {"synthetic": "warped-voronoi"},
                                             compute_masks, needs_path=True)]
        if with_models:
            import open_clip.model

            dino_model = load_dino(DinoConfig(), pretrained=False)
            clip_model = open_clip.model.CLIP(**{**TINY_CLIP_CONFIG, "embed_dim": 512}).eval()  # ViT-B-16's width
            extractors.append(extractors_module.dino_extractor(DinoConfig(), "cpu", model=dino_model))
            extractors.append(extractors_module.clip_extractor(ClipConfig(), "cpu", model=clip_model))
        cache_dir = data_dir / cache_module.CACHE_FOLDER
        t0 = time.perf_counter()
        extract_all(paths, extractors, cache_dir, progress=False, data_dir=data_dir)
        extract_s = time.perf_counter() - t0
        cache = cache_module.FeatureCache(data_dir, cache_dir)
        products = [e.product for e in extractors]
        for path in paths:
            w, h = (int(v) for v in path.name.split("_")[0].split("x"))
            coarse, fine = maps[path.name]
            row = {"size": (w, h), "image": path.name, "segments": (int(coarse.max()), int(fine.max()))}
            for product in products:
                arrays = cache._load_arrays(product, path)
                t0 = time.perf_counter()
                cache.read(product, path)
                row[f"{product}_read_s"] = time.perf_counter() - t0
                row[f"{product}_disk"] = cache.data_path(product, path).stat().st_size
                row[f"{product}_manifest"] = cache.manifest_path(product, path).stat().st_size
                row[f"{product}_raw"] = sum(a.nbytes for a in arrays.values())
                row[f"{product}_shapes"] = {k: (a.dtype.name, list(a.shape)) for k, a in arrays.items()}
            row["ram"] = datamanager_ram(cache, path, (h, w), products)
            rows.append(row)
        pca = cache_dir / cache_module.DINO / "_pca.npz"
        for row in rows:
            row["pca_bytes"] = pca.stat().st_size if pca.exists() else 0
            row["extract_s_all"] = extract_s
    return rows


def datamanager_ram(cache, path: Path, image_hw: Tuple[int, int], products: Sequence[str]) -> Dict[str, int]:
    """Bytes `SplatsegDataManager._attach_masks` keeps per image, through the loaders and conversions it uses."""
    from splatseg_ns.core.io.images import load_image

    ram = {"image uint8": tensor_bytes([torch.from_numpy(load_image(path))])}  # cache_images_type="uint8"
    coarse, fine = cache.load_masks(path, image_hw)  # CachedMasks.load -> int32; the datamanager keeps int16 if it can
    kept = np.int16 if max(coarse.max(), fine.max()) <= np.iinfo(np.int16).max else np.int32
    ram["coarse_mask+fine_mask"] = tensor_bytes([torch.from_numpy(m.astype(kept)) for m in (coarse, fine)])
    ram["_masks as int32"] = tensor_bytes([torch.from_numpy(coarse), torch.from_numpy(fine)])
    ram["_masks as int16"] = tensor_bytes([torch.from_numpy(m.astype(np.int16)) for m in (coarse, fine)])
    if "clip" in products:
        clip = cache.load_clip(path)
        ram["clip ids (long) + emb (float32)"] = tensor_bytes(
            [torch.from_numpy(ids).long() for ids, _ in clip.values()] + [torch.from_numpy(e) for _, e in clip.values()]
        )
        ram["_clip as int32 + float16"] = sum(ids.nbytes + e.astype(np.float16).nbytes for ids, e in clip.values())
    if "dino" in products:
        dino = torch.from_numpy(cache.load_dino(path).astype("float32"))
        ram["dino (float32)"] = tensor_bytes([dino])
        ram["_dino as float16"] = dino.numel() * 2
    return ram


def real_datamanager_check(resolution: int = 64) -> Dict[str, str]:
    """dtype and bytes per pixel of each tensor in the real datamanager's cached training batch (demo scene)."""
    from splatseg_ns.method_config import splatseg_trainer_config
    from splatseg_ns.scenes.demo_scene import write_demo_scene

    with tempfile.TemporaryDirectory() as tmp:
        data = write_demo_scene(Path(tmp) / "scene", num_views=4, resolution=resolution)
        config = splatseg_trainer_config()
        config.pipeline.datamanager.data = data
        datamanager = config.pipeline.datamanager.setup(device="cpu", test_mode="val")
        cached = datamanager.cached_train[0]
        h, w = cached["image"].shape[:2]
        return {k: f"{v.dtype} {list(v.shape)}: {tensor_bytes([v]) / (h * w):.1f} B/px"
                for k, v in cached.items() if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def per_g(value: float, n: int) -> str:
    return f"{value / n:.1f}"


def print_gaussian_tables(results: List[Dict], dino_dim: int) -> Dict[str, float]:
    """Per-group and per-category tables; returns the bytes per Gaussian of the largest size."""
    print("### Measured: memory per Gaussian (bytes / Gaussian), per parameter group\n")
    header = "| group | shape | " + " | ".join(f"param / grad / Adam @ {r['n'] // 1000}k" for r in results) + " |"
    print(header)
    print("|---|---|" + "---:|" * len(results))
    for name in results[0]["groups"]:
        cells = []
        for r in results:
            g = r["groups"][name]
            cells.append(f"{per_g(g['param'], r['n'])} / {per_g(g['grad'], r['n'])} / {per_g(g['adam'], r['n'])}")
        shape = results[0]["groups"][name]["shape"]
        print(f"| {name} | [N, {', '.join(map(str, shape[1:]))}] | " + " | ".join(cells) + " |")
    print(f"\nAdam state keys: {results[0]['groups']['means']['adam_keys']} (step: one scalar per group).\n")

    print("### Measured: per-Gaussian bytes by category\n")
    print("| category | what | " + " | ".join(f"@ {r['n']:,}" for r in results) + " | linear? |")
    print("|---|---|" + "---:|" * len(results) + "---|")
    rows: Dict[str, List[float]] = {}

    def add(label: str, what: str, values: List[float]) -> None:
        rows[label] = values
        per = [v / r["n"] for v, r in zip(values, results)]
        linear = "yes" if max(per) - min(per) <= 0.01 * max(per) + 0.05 else f"no ({min(per):.2f}..{max(per):.2f})"
        print(f"| {label} | {what} | " + " | ".join(f"{p:.1f}" for p in per) + f" | {linear} |")

    def total(r, key, names=None):
        return sum(g[key] for name, g in r["groups"].items() if names is None or name in names)

    seg = ["means", "scales", "quats", "features_dc", "features_rest", "opacities", "seg_features"]
    add("parameters (no DINO)", "6 splatfacto groups + seg_features float32", [total(r, "param", seg) for r in results])
    add("gradients (no DINO)", "same shapes, all groups over the two stages", [total(r, "grad", seg) for r in results])
    add("Adam state (no DINO)", "exp_avg + exp_avg_sq (+ step scalar)", [total(r, "adam", seg) for r in results])
    if dino_dim:
        add(f"DINO feature ({dino_dim} ch): param + grad + Adam", "gauss_params['dino_features']",
            [sum(r["groups"]["dino_features"][k] for k in ("param", "grad", "adam")) for r in results])
    add("densification state", "DefaultStrategy: " + ", ".join(results[0]["strategy"]),
        [sum(r["strategy"].values()) for r in results])
    add("model.info kept between steps", "rasteriser info: means2d (+grad, absgrad), radii, depths, conics, opacities",
        [r["info_bytes"] for r in results])
    add("kNN table (feature stage)", f"model._neighbours {results[0]['neighbours_dtype'].split(' ')[0]} [N, 5]",
        [r["neighbours_bytes"] for r in results])
    for level in ("coarse", "fine"):
        add(f"ClickIndex ({level})", "assignment + similarity + slots (" + results[0]["click_index"][level]["dtypes"] + ")",
            [sum(r["click_index"][level][k] for k in ("assignment", "similarity", "slots")) for r in results])
    print(f"\nNot per Gaussian: other parameters and buffers {results[-1]['other_fixed'] / 1e3:.1f} kB; "
          f"seed points kept by splatfacto {results[-1]['seed_points_bytes'] / results[-1]['n']:.0f} B per seed point; "
          f"rasteriser info fields: " + ", ".join(f"{k} {v}" for k, v in results[-1]["info_fields"].items()) + ".\n")
    last = results[-1]
    return {k: v[-1] / last["n"] for k, v in rows.items()}


def print_step_tables(results: List[Dict], full: Tuple[int, int], dino_dim: int, plan_n: float) -> Dict[str, float]:
    """Measured step peaks and their projection to `plan_n` Gaussians; returns the projection (from the largest size)."""
    print(f"### Measured: one training step's peak above the persistent state, {full[0]}x{full[1]}, "
          "stand-in rasteriser\n")
    print("Gradients + activations + loss temporaries + the render and its gradient, tracked per tensor storage "
          f"over forward, losses and backward. Projected to {plan_n / 1e6:g}M: the same allocation timeline with "
          "every per-Gaussian storage scaled (both sizes should project to the same value). "
          "End: what is still allocated after backward (the gradients), per Gaussian.\n")
    keys = [("colour_peak", "colour stage (L1 + SSIM, SH 3)"), ("feature_peak", "feature stage (24 ch, no DINO)")]
    if dino_dim:
        keys.append(("feature_dino_peak", f"feature stage + DINO {dino_dim} ch"))
    print("| stage | " + " | ".join(f"peak @ {r['n'] // 1000}k (MB)" for r in results) + " | " +
          " | ".join(f"projected to {plan_n / 1e6:g}M from {r['n'] // 1000}k (GB)" for r in results) +
          " | end (B / Gaussian) | s/step (CPU) |")
    print("|---|" + "---:|" * (2 * len(results) + 2))
    for r in results:
        if r["n"] <= r["sample_cap"]:
            print(f"Note: {r['n']:,} Gaussians <= {r['sample_cap']:,} sampled per step by the spatial/GFL terms; "
                  "its projection scales those samples with N and overestimates.\n")
    projected = {}
    for key, label in keys:
        projected[key] = results[-1][key]["projected"][plan_n]
        print(f"| {label} | " + " | ".join(f"{r[key]['peak'] / MB:.0f}" for r in results) + " | " +
              " | ".join(f"{r[key]['projected'][plan_n] / GB:.2f}" for r in results) +
              f" | {results[-1][key]['end_per_gaussian'] / results[-1]['n']:.0f} | {results[-1][key]['seconds']:.1f} |")
    print()
    return projected


def print_cache_tables(rows: List[Dict], plan_images: int) -> Dict:
    products = [p for p in ("masks", "dino", "clip") if f"{p}_disk" in rows[0]]
    print("### Measured: mask cache on disk, bytes per image (npz, savez_compressed)\n")
    print("| image | coarse / fine segments | " + " | ".join(f"{p} disk (raw)" for p in products) +
          " | manifests | total per image | x " + f"{plan_images:,} images |")
    print("|---|---|" + "---:|" * (len(products) + 3))
    by_size: Dict[Tuple[int, int], List[Dict]] = {}
    for r in rows:
        by_size.setdefault(r["size"], []).append(r)
    summary = {}
    for size, rs in by_size.items():
        mean = lambda key, rs=rs: float(np.mean([r[key] for r in rs]))  # noqa: E731
        disk = {p: mean(f"{p}_disk") for p in products}
        raw = {p: mean(f"{p}_raw") for p in products}
        manifests = sum(mean(f"{p}_manifest") for p in products)
        total = sum(disk.values()) + manifests
        segs = " / ".join(f"{np.mean([r['segments'][i] for r in rs]):.0f}" for i in (0, 1))
        print(f"| {size[0]}x{size[1]} | {segs} | " +
              " | ".join(f"{disk[p] / 1e3:.0f} kB ({raw[p] / 1e3:.0f} kB)" for p in products) +
              f" | {manifests / 1e3:.1f} kB | {total / 1e3:.0f} kB | {total * plan_images / GB:.2f} GB |")
        summary[size] = {"disk": disk, "raw": raw, "manifests": manifests, "total": total,
                         "ram": {k: float(np.mean([r["ram"][k] for r in rs])) for k in rs[0]["ram"]},
                         "read": {p: mean(f"{p}_read_s") for p in products}}
    shapes = rows[-1]
    print("\nArrays of the largest entry: " + "; ".join(
        f"{p}: " + ", ".join(f"{k} {d} {s}" for k, (d, s) in shapes[f"{p}_shapes"].items()) for p in products) +
        (f"; plus dino/_pca.npz once per scene ({rows[0]['pca_bytes'] / 1e3:.0f} kB)" if rows[0].get("pca_bytes")
         else "") + ".")
    print(f"Extraction of all {len(rows)} entries (synthetic masks, random-weight DINO/CLIP on CPU): "
          f"{rows[0]['extract_s_all']:.0f} s.\n")

    print("### Measured: RAM the datamanager keeps per training image (cached batch)\n")
    keys = [k for k in next(iter(summary.values()))["ram"] if not k.startswith("_")]
    print("| image | " + " | ".join(keys) + " | total | read from cache (s) |")
    print("|---|" + "---:|" * (len(keys) + 2))
    for size, s in summary.items():
        total = sum(s["ram"][k] for k in keys)
        s["ram_total"] = total
        print(f"| {size[0]}x{size[1]} | " + " | ".join(f"{s['ram'][k] / MB:.2f} MB" for k in keys) +
              f" | {total / MB:.2f} MB | {sum(s['read'].values()):.2f} |")
    print()
    return summary


def print_plan(args, per_gaussian: Dict[str, float], fits: Dict, summary: Dict, full: Tuple[int, int]) -> None:
    n = args.plan_gaussians
    pixels = full[0] * full[1]
    budget = args.gpu_gb * GB
    t = args.tiles_per_gaussian
    print(f"### Estimate (gsplat 1.4.0's own buffers, not measured: no GPU), {full[0]}x{full[1]}, one camera, "
          f"unpacked, {t:g} tiles per Gaussian\n")
    print("| stage | renders | per Gaussian (B) | per intersection (B) | per pixel (B) | "
          f"at {n / 1e6:g}M Gaussians (GB) |")
    print("|---|---:|---:|---:|---:|---:|")
    estimates = {}
    stages = [("colour", "colour", 0), ("feature", "feature (24 ch)", 0)]
    if args.dino_dim:
        stages.append(("feature_dino", f"feature + DINO {args.dino_dim} ch", args.dino_dim))
    for key, label, dino in stages:
        e = gsplat_estimate("colour" if key == "colour" else "feature", 24, dino)
        size = n * e["per_gaussian"] + n * t * e["per_isect"] + pixels * e["per_pixel"]
        estimates[key] = size
        print(f"| {label} | {e['renders']} | {e['per_gaussian']} | {e['per_isect']} | {e['per_pixel']} | {size / GB:.2f} |")
    print(f"\nAssumptions: every Gaussian in the frustum (unpacked buffers are [C, N] regardless), {t:g} 16x16 tiles "
          "per Gaussian on average, sort buffers doubled, CUDA context and allocator slack not included "
          f"(budgeted below as {args.reserve_gb:g} GB). Sensitivity: each further 10 tiles per Gaussian adds " +
          ", ".join(f"{n * 10 * gsplat_estimate('colour' if k == 'colour' else 'feature', 24, d)['per_isect'] / GB:.2f} GB "
                    f"({label})" for k, label, d in stages) + ".\n")

    print(f"### Plan: {n / 1e6:g}M Gaussians at {full[0]}x{full[1]} on a {args.gpu_gb:g} GB GPU\n")
    persistent_nodino = sum(per_gaussian[k] for k in ("parameters (no DINO)", "Adam state (no DINO)",
                                                        "densification state", "model.info kept between steps"))
    rows = [("colour stage", persistent_nodino, "colour_peak", "colour", 0.0)]
    # the strategy's state and the last colour step's info stay allocated through the feature stage
    rows.append(("feature stage", persistent_nodino + per_gaussian["kNN table (feature stage)"],
                 "feature_peak", "feature", 0.0))
    dino_key = next((k for k in per_gaussian if k.startswith("DINO feature")), None)
    if dino_key:
        dino_pg = per_gaussian[dino_key] * 3 / 4  # its grad is in the step peak
        rows.append((f"colour stage, model with DINO {args.dino_dim} ch", persistent_nodino + dino_pg,
                     "colour_peak", "colour", 0.0))
        rows.append((f"feature stage + DINO {args.dino_dim} ch", rows[1][1] + dino_pg, "feature_dino_peak",
                     "feature_dino", 0.0))
    print("| stage | persistent: params + Adam + state (GB) | step peak, measured, projected (GB) | "
          "gsplat buffers, estimate (GB) | reserve (GB) | total (GB) | fits? | headroom (GB) |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    totals = {}
    for label, persistent_pg, peak_key, est_key, _ in rows:
        persistent = persistent_pg * n
        step = fits[peak_key]
        total = persistent + step + estimates[est_key] + args.reserve_gb * GB
        totals[label] = total
        fits_ = "yes" if total <= budget else "NO"
        print(f"| {label} | {persistent / GB:.2f} | {step / GB:.2f} | {estimates[est_key] / GB:.2f} | "
              f"{args.reserve_gb:.1f} | {total / GB:.2f} | {fits_} | {(budget - total) / GB:.2f} |")
    largest = max(summary)
    s = summary[largest]
    images = args.plan_images
    print(f"\n### Plan: {images:,}-image mask cache at {largest[0]}x{largest[1]}\n")
    print("| where | per image (MB) | x images (GB) | note |")
    print("|---|---:|---:|---|")
    print(f"| disk: splatseg_cache (masks + DINO + CLIP + manifests) | {s['total'] / MB:.3f} | "
          f"{s['total'] * images / GB:.2f} | measured per entry |")
    ram = s["ram"]
    total = s["ram_total"]
    print(f"| RAM: cached batch as the datamanager keeps it | {total / MB:.2f} | {total * images / GB:.1f} | "
          "nerfstudio moves the cache to CPU (pinned images) above 500 images |")
    slim = total - ram["coarse_mask+fine_mask"] + ram["_masks as int16"]
    if "_dino as float16" in ram:
        slim += ram["_dino as float16"] - ram["dino (float32)"]
    if "_clip as int32 + float16" in ram:
        slim += ram["_clip as int32 + float16"] - ram["clip ids (long) + emb (float32)"]
    print(f"| RAM with DINO/CLIP also kept float16 | {slim / MB:.2f} | {slim * images / GB:.1f} | "
          "same ids (< 32768 per image), cast per step |")
    gpu500 = (ram["image uint8"] + ram["coarse_mask+fine_mask"]) * 500
    print(f"| GPU at 500 images (cache_images='gpu', the default up to 500) | "
          f"{(ram['image uint8'] + ram['coarse_mask+fine_mask']) / MB:.2f} | {gpu500 / GB:.1f} | "
          "images + masks follow the image to the GPU |")
    print(f"\n### Plan: training images cached on the GPU ({largest[0]}x{largest[1]})\n")
    print("nerfstudio caches the training images on the GPU (`cache_images='gpu'`, its default) up to 500 images "
          "and on the CPU above; splatseg's masks follow the image's device. Against the stages above:\n")
    print("| stage | masks as | GPU per image (MB) | + 500 images (GB) | total (GB) | fits? | images that fit |")
    print("|---|---|---:|---:|---:|---|---:|")
    for label, total in totals.items():
        if label.startswith("colour"):
            continue
        for dtype, masks in (("int32 (before)", ram["_masks as int32"]), ("int16 (now)", ram["_masks as int16"])):
            per_image = ram["image uint8"] + masks
            fit = int(max(0.0, budget - total) // per_image)
            print(f"| {label} | {dtype} | {per_image / MB:.2f} | {500 * per_image / GB:.1f} | "
                  f"{(total + 500 * per_image) / GB:.1f} | {'yes' if total + 500 * per_image <= budget else 'NO'} | "
                  f"{fit} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[120_000, 360_000],
                        help="Gaussians measured; above spatial_samples/GFL's max_gaussians (100k), or the "
                        "projection counts their samples as per-Gaussian")
    parser.add_argument("--dino-dim", type=int, default=64, help="DINO channels per Gaussian (0: none)")
    parser.add_argument("--small-resolution", type=int, nargs=2, default=[160, 90], metavar=("W", "H"),
                        help="the real steps' render size (the CPU rasteriser)")
    parser.add_argument("--step-resolution", type=int, nargs=2, default=[1920, 1080], metavar=("W", "H"),
                        help="the stand-in steps' (and the plan's) image size")
    parser.add_argument("--cache-sizes", nargs="+", default=["480x270", "960x540", "1920x1080"])
    parser.add_argument("--cache-images", type=int, default=2, help="synthetic images per cache size")
    parser.add_argument("--segments", type=int, nargs=2, default=[50, 150], metavar=("COARSE", "FINE"))
    parser.add_argument("--no-models", action="store_true", help="cache: masks only (no DINO, CLIP)")
    parser.add_argument("--no-datamanager", action="store_true", help="skip the real-datamanager dtype check")
    parser.add_argument("--plan-gaussians", type=float, default=3e6)
    parser.add_argument("--plan-images", type=int, default=1000)
    parser.add_argument("--gpu-gb", type=float, default=24.0)
    parser.add_argument("--reserve-gb", type=float, default=1.5, help="CUDA context + allocator slack (assumed)")
    parser.add_argument("--tiles-per-gaussian", type=float, default=10.0, help="gsplat estimate's assumption")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="110k/220k Gaussians, 2 cache sizes, 1 image each")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.cache_sizes, args.cache_images = [110_000, 220_000], ["480x270", "1920x1080"], 1
    torch.set_num_threads(args.threads)
    full = tuple(args.step_resolution)
    small = tuple(args.small_resolution)

    print(f"torch {torch.__version__}, device cpu, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    results = []
    for n in args.sizes:
        t0 = time.perf_counter()
        results.append(gaussian_memory(n, args.dino_dim, small, full, [args.plan_gaussians]))
        print(f"(measured {n:,} Gaussians in {time.perf_counter() - t0:.0f} s; max RSS so far "
              f"{max_rss_bytes() / GB:.2f} GB)")
    print()
    per_gaussian = print_gaussian_tables(results, args.dino_dim)
    fits = print_step_tables(results, full, args.dino_dim, args.plan_gaussians)

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.cache_sizes]
    rows = cache_bytes(sizes, args.cache_images, *args.segments, with_models=not args.no_models)
    summary = print_cache_tables(rows, args.plan_images)
    if not args.no_datamanager:
        check = real_datamanager_check()
        print("Real `SplatsegDataManager` on the demo scene (folder masks), cached training batch: " +
              "; ".join(f"{k} {v}" for k, v in check.items()) + ".\n")
    print_plan(args, per_gaussian, fits, summary, full)
    print(f"max RSS of this run: {max_rss_bytes() / GB:.2f} GB")


if __name__ == "__main__":
    main()
