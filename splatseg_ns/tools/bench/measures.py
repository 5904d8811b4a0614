"""What one row of the speed table measures: the selection and its floors, the click from the pixel, the
feature render, the PLY export against a raw write."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from splatseg_ns.core.io.ply import write_gaussians_ply
from splatseg_ns.core.render.contributors import GaussianGrid, click_candidate, pixel_contributors
from splatseg_ns.core.render.rasterize import rasterize as torch_rasterize
from splatseg_ns.core.segment.selection import precompute_click_index
from splatseg_ns.tools.bench.synthetic import FEATURE_NOISE, SH_REST_BASES, synthetic_scene
from splatseg_ns.tools.bench.timing import Timer, torch_threads


@torch.no_grad()
def selection_timings(
    timer: Timer,
    features: torch.Tensor,
    centers: torch.Tensor,
    coarse_centers: torch.Tensor,
    coarse_dim: int,
    gen: torch.Generator,
) -> Dict:
    """Precompute per level, the click (fine level) with and without a negative, and its floors."""
    out: Dict = {}
    # The precompute is a one-off: one call each, the cold cost a user waits for.
    out["precompute_coarse_s"] = timer.once(lambda: precompute_click_index(features[:, :coarse_dim], coarse_centers))
    timer.sync()
    start = time.perf_counter()
    index = precompute_click_index(features, centers)
    timer.sync()
    out["precompute_s"] = time.perf_counter() - start
    assignment = index.assignment

    k_pos, k_neg = 3 % centers.shape[0], 7 % centers.shape[0]
    # A clicked pixel's rendered feature: near a candidate, not on it.
    noise = torch.randn(2, centers.shape[1], generator=gen, device=centers.device)
    positive = (centers[k_pos] + FEATURE_NOISE * noise[0])[None]
    negative = (centers[k_neg] + FEATURE_NOISE * noise[1])[None]
    v = F.normalize(positive[0], dim=0)

    out["click_ms"] = timer.median_s(lambda: index.select(positive)) * 1e3
    out["click_repeats"] = timer.last_count
    out["click_pos_neg_ms"] = timer.median_s(lambda: index.select(positive, negative)) * 1e3
    out["floor_compare_ms"] = timer.median_s(lambda: assignment == k_pos) * 1e3
    # The same compare on one thread: far faster means other load is descheduling our threads.
    out["floor_compare_1thread_ms"] = None if features.device.type != "cpu" else out["floor_compare_ms"]
    if features.device.type == "cpu" and torch.get_num_threads() > 1:
        with torch_threads(1):
            out["floor_compare_1thread_ms"] = timer.median_s(lambda: assignment == k_pos) * 1e3
    out["floor_matvec_ms"] = timer.median_s(lambda: features @ v) * 1e3
    out["click_selected"] = int(index.select(positive).sum())
    out["ratio_vs_compare"] = out["click_ms"] / out["floor_compare_ms"]
    out["ratio_pos_neg_vs_compare"] = out["click_pos_neg_ms"] / out["floor_compare_ms"]
    out["ratio_vs_matvec"] = out["click_ms"] / out["floor_matvec_ms"]
    return out


@torch.no_grad()
def pixel_click_timings(timer: Timer, features: torch.Tensor, centers: torch.Tensor, resolution: int,
                         gen: torch.Generator) -> Dict:
    """A click from its pixel to the selection (the pixel's contributors, their candidate, the gather: what
    `splatseg select` and the viewer do per click, with the scene's `GaussianGrid` built once beforehand),
    against one pass over the Gaussians' positions (their depths along the camera's axis, `means @ axis`)."""
    scene = synthetic_scene(features.shape[0], resolution, gen, features.device)
    index = precompute_click_index(features, centers)
    grid = GaussianGrid.build(scene["means"], scene["scales"].amax(dim=-1))  # once per scene: not the click's
    pixel = resolution // 2

    def contributors():
        return pixel_contributors(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmat"],
                                  scene["K"], resolution, resolution, pixel, pixel, grid=grid)

    def click():
        found = contributors()
        candidate, _ = click_candidate(found, index.assignment, index.num_candidates)
        return index.select(found.blend(features)[None], click_ids=torch.tensor([candidate], device=features.device))

    axis = scene["viewmat"][2, :3]
    out = {"pixel_click_ms": timer.median_s(click) * 1e3, "pixel_contributors_ms": timer.median_s(contributors) * 1e3,
           "floor_positions_ms": timer.median_s(lambda: scene["means"] @ axis) * 1e3,
           "pixel_contributor_count": int(contributors().ids.numel())}
    out["pixel_click_ratio"] = out["pixel_click_ms"] / out["floor_positions_ms"]
    return out


def rasterizer(device: torch.device) -> Tuple[Callable, str]:
    """gsplat's CUDA rasteriser when it can run here, else splatseg's pure-torch one."""
    if device.type == "cuda":
        try:
            from gsplat import rasterization

            return rasterization, "gsplat.rasterization"
        except ImportError:
            pass
    return torch_rasterize, "splatseg rasterize"


@torch.no_grad()
def render_timing(
    timer: Timer, render_fn: Callable, features: torch.Tensor, resolution: int, gen: torch.Generator, cap_s: float
) -> Tuple[float, str]:
    """(seconds, note) of one forward render of the [N, D] features as colours, of `synthetic_scene`."""
    scene = synthetic_scene(features.shape[0], resolution, gen, features.device)

    def render():
        return render_fn(scene["means"], scene["quats"], scene["scales"], scene["opacities"], features,
                         scene["viewmat"][None], scene["K"][None], resolution, resolution)

    cold = timer.once(render)
    if cold > cap_s:
        return cold, f"1 cold call, over the {cap_s:.0f} s cap"
    seconds = timer.median_s(render, warmup=0, min_repeats=3 if cold * 3 < cap_s else 1)
    return seconds, ""


def export_timings(n: int, repeats: int, seed: int) -> Dict:
    """PLY export of n SH-degree-3 Gaussians against one `tofile` of the same bytes."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n, 3), dtype=np.float32)
    scales = rng.uniform(-5.0, -2.0, size=(n, 3)).astype(np.float32)
    quats = rng.standard_normal((n, 4), dtype=np.float32)
    opacities = rng.uniform(-3.0, 3.0, size=n).astype(np.float32)  # all above the 1/255 cut
    features_dc = rng.standard_normal((n, 3), dtype=np.float32)
    features_rest = 0.1 * rng.standard_normal((n, SH_REST_BASES, 3), dtype=np.float32)
    export, floor = [], []
    with tempfile.TemporaryDirectory(prefix="splatseg_bench_") as folder:
        ply_path, raw_path = Path(folder) / "export.ply", Path(folder) / "raw.bin"
        nbytes = 0
        for i in range(repeats + 1):  # the first of each is a warm-up
            start = time.perf_counter()
            write_gaussians_ply(ply_path, means, scales, quats, opacities, features_dc, features_rest)
            if i:
                export.append(time.perf_counter() - start)
            nbytes = ply_path.stat().st_size
            ply_path.unlink()
            if i == 0:
                raw = np.ones(nbytes, dtype=np.uint8)  # touched, so no page faults inside the timing
            start = time.perf_counter()
            raw.tofile(raw_path)
            if i:
                floor.append(time.perf_counter() - start)
            raw_path.unlink()
        del raw
    export_s, floor_s = statistics.median(export), statistics.median(floor)
    return {
        "export_s": export_s, "export_floor_s": floor_s, "export_ratio": export_s / floor_s, "export_mb": nbytes / 1e6,
    }  # fmt: skip
