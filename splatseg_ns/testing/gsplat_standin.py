"""A stand-in for `gsplat.rasterization` that runs on CPU and checks every call like gsplat would.

gsplat's CUDA kernels cannot run without a GPU, so the model's gsplat branch would otherwise never
execute in the tests. The stand-in
- binds each call to the signature of the `gsplat.rasterization` that is installed, so a misspelt
  or missing argument fails as it would on a GPU (`TypeError`);
- checks what gsplat 1.4.0 checks before (and what its kernels need beyond) its asserts: shapes,
  float32 tensors on one device, SH coefficients only with an `sh_degree`, the literal choices
  (`render_mode`, `rasterize_mode`, `camera_model`), `absgrad` not with `distributed`,
  `backgrounds` of shape [C, D];
- computes the image with the project's own rasteriser (`core.render.rasterize`, gsplat's semantics) and
  returns `info` with gsplat's keys, shapes and dtypes, the tile intersections included (gsplat's
  `isect_tiles` / `isect_offset_encode` rule), so the densification strategy reads what it reads
  on a GPU.

Relies on torch, the installed gsplat's Python package (for its signature only) and `core.render.rasterize`.
"""

from __future__ import annotations

import inspect
import math
import typing
from typing import Callable, Dict, List, Tuple

import torch
from torch import Tensor

from splatseg_ns.core.render.rasterize import rasterize

TENSOR_ARGUMENTS = ("means", "quats", "scales", "opacities", "colors", "viewmats", "Ks", "backgrounds", "covars")


class GsplatStandIn:
    """Callable like `gsplat.rasterization`; `calls` keeps every call's bound arguments (for tests)."""

    def __init__(self, real: Callable):
        self.signature = inspect.signature(real)
        self.calls: List[Dict] = []

    def __call__(self, *args, **kwargs) -> Tuple[Tensor, Tensor, Dict]:
        bound = self.signature.bind(*args, **kwargs)  # TypeError on a wrong name, as on a GPU
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        self.check(arguments)
        self.calls.append(arguments)
        return self.render(arguments)

    def check(self, a: Dict) -> None:
        """What gsplat 1.4.0 refuses, or its CUDA kernels cannot take."""
        for name, parameter in self.signature.parameters.items():
            choices = typing.get_args(parameter.annotation) if typing.get_origin(parameter.annotation) is typing.Literal else ()
            if choices and a[name] not in choices:
                raise AssertionError(f"{name}={a[name]!r} is not one of {choices}")
        device = a["means"].device
        for name in TENSOR_ARGUMENTS:
            value = a.get(name)
            if value is None:
                continue
            if not isinstance(value, Tensor):
                raise TypeError(f"{name} must be a tensor, got {type(value).__name__}")
            if value.dtype != torch.float32:
                raise TypeError(f"{name} is {value.dtype}: gsplat's kernels take float32 only")
            if value.device != device:
                raise RuntimeError(f"{name} is on {value.device}, means on {device}")
        for name in ("width", "height"):
            if not isinstance(a[name], int) or isinstance(a[name], bool) or a[name] <= 0:
                raise TypeError(f"{name} must be a positive int, got {a[name]!r}")
        N, C = a["means"].shape[0], a["viewmats"].shape[0]
        assert a["means"].shape == (N, 3), a["means"].shape
        if a["covars"] is None:
            assert a["quats"].shape == (N, 4), a["quats"].shape
            assert a["scales"].shape == (N, 3), a["scales"].shape
        else:
            assert a["covars"].shape == (N, 3, 3), a["covars"].shape
        assert a["opacities"].shape == (N,), a["opacities"].shape
        assert a["viewmats"].shape == (C, 4, 4), a["viewmats"].shape
        assert a["Ks"].shape == (C, 3, 3), a["Ks"].shape
        colors = a["colors"]
        if a["sh_degree"] is None:  # post-activation values [N, D] or [C, N, D]
            assert (colors.dim() == 2 and colors.shape[0] == N) or (colors.dim() == 3 and colors.shape[:2] == (C, N)), \
                colors.shape
        else:  # SH coefficients [N, K, 3] or [C, N, K, 3]
            assert isinstance(a["sh_degree"], int) and a["sh_degree"] >= 0, a["sh_degree"]
            assert (colors.dim() == 3 and colors.shape[0] == N and colors.shape[2] == 3) or (
                colors.dim() == 4 and colors.shape[:2] == (C, N) and colors.shape[3] == 3), colors.shape
            assert (a["sh_degree"] + 1) ** 2 <= colors.shape[-2], colors.shape
        if a["absgrad"]:
            assert not a["distributed"], "AbsGrad is not supported in distributed mode."
        if a["backgrounds"] is not None:
            channels = 0 if a["render_mode"] in ("D", "ED") else (3 if a["sh_degree"] is not None else colors.shape[-1])
            assert a["backgrounds"].shape == (C, channels), a["backgrounds"].shape
        for name in ("packed", "absgrad", "sparse_grad", "distributed"):
            if not isinstance(a[name], bool):
                raise TypeError(f"{name} must be a bool, got {a[name]!r}")

    def render(self, a: Dict) -> Tuple[Tensor, Tensor, Dict]:
        kwargs = {k: v for k, v in a.items() if k != "channel_chunk"}
        colors, alphas, info = rasterize(**kwargs)
        info.update(tile_intersections(info, a["packed"]))
        return colors, alphas, info


@torch.no_grad()
def tile_intersections(info: Dict, packed: bool) -> Dict[str, Tensor]:
    """gsplat's `isect_tiles` + `isect_offset_encode` outputs for the projection in `info`: each visible
    Gaussian's tile box, the (camera, tile, depth)-sorted intersection ids and every tile's first one."""
    ts, tw, th, C = info["tile_size"], info["tile_width"], info["tile_height"], info["n_cameras"]
    radii, means2d, depths = info["radii"], info["means2d"].detach(), info["depths"].detach()
    if packed:
        camera_ids, flat = info["camera_ids"], torch.arange(radii.shape[0], device=radii.device)
    else:
        N = radii.shape[1]
        camera_ids = torch.arange(C, device=radii.device).repeat_interleave(N)
        flat = torch.arange(C * N, device=radii.device)
        radii, means2d, depths = radii.reshape(-1), means2d.reshape(-1, 2), depths.reshape(-1)
    r = radii.float() / ts
    x, y = means2d[:, 0] / ts, means2d[:, 1] / ts
    x0, x1 = torch.floor(x - r).clamp(0, tw).long(), torch.ceil(x + r).clamp(0, tw).long()
    y0, y1 = torch.floor(y - r).clamp(0, th).long(), torch.ceil(y + r).clamp(0, th).long()
    counts = torch.where(radii > 0, (x1 - x0) * (y1 - y0), torch.zeros_like(x0))
    total = int(counts.sum())
    owner = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts, output_size=total)
    k = torch.arange(total, device=counts.device) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts,
                                                                             output_size=total)
    width = (x1 - x0)[owner]
    tile = (y0[owner] + k // width) * tw + x0[owner] + k % width
    tile_bits = max(1, math.ceil(math.log2(tw * th + 1)))
    depth_bits = depths[owner].float().view(torch.int32).long() & 0xFFFFFFFF
    isect_ids = (camera_ids[owner].long() << (32 + tile_bits)) | (tile << 32) | depth_bits
    isect_ids, order = torch.sort(isect_ids)
    keys = (isect_ids >> 32).contiguous()  # camera * tiles + tile, in gsplat's encoding
    starts = torch.arange(C, device=keys.device)[:, None] * (1 << tile_bits) + torch.arange(tw * th, device=keys.device)
    offsets = torch.searchsorted(keys, starts.reshape(-1).contiguous()).reshape(C, th, tw)
    return {
        "tiles_per_gauss": counts.to(torch.int32).reshape(info["radii"].shape),
        "isect_ids": isect_ids,
        "flatten_ids": flat[owner][order].to(torch.int32),
        "isect_offsets": offsets.to(torch.int32),
    }


def install(monkeypatch) -> GsplatStandIn:
    """Put the stand-in where the model looks for gsplat's rasteriser (`pytest`'s monkeypatch undoes it)."""
    import gsplat

    stand_in = GsplatStandIn(gsplat.rasterization)
    monkeypatch.setattr(gsplat, "rasterization", stand_in)
    return stand_in
