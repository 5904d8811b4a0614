"""2. gsplat's own buffers: an ESTIMATE read off gsplat 1.4.0's code (they cannot be measured without CUDA)."""

from __future__ import annotations

import math
from typing import Dict


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
