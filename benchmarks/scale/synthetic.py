"""Synthetic SAM-like two-level masks and images for the cache measurement."""

from __future__ import annotations

from typing import Tuple

import numpy as np


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
