"""Noisy, view-inconsistent instance masks, made from exact ones: what automatic masks look like.

SAM's masks disagree from view to view: an object merged with its neighbour in one view, split
in two in another, thin parts and borders missing, ids renumbered in every view. To measure what
that does to a method (GFL exists because of it: Click-Gaussian, Sec. 3.3), `corrupt_instance_map`
makes such masks from a scene's exact ones, seeded per view, and `write_noisy_scene` copies a
scene with its masks corrupted.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import numpy as np
from PIL import Image

from splatseg_ns.core.features import LEVELS


def _instance_ids(ids: np.ndarray) -> np.ndarray:
    values = np.unique(ids)
    return values[values > 0]


def merge_two_instances(ids: np.ndarray, rng: np.random.Generator, merge_prob: float) -> np.ndarray:
    """With probability `merge_prob`, two distinct instances of this view get the same id."""
    present = _instance_ids(ids)
    if rng.random() >= merge_prob or len(present) < 2:
        return ids
    keep, absorbed = rng.choice(present, size=2, replace=False)
    return np.where(ids == absorbed, keep, ids)


def split_instances(ids: np.ndarray, rng: np.random.Generator, split_prob: float) -> np.ndarray:
    """Each instance, with probability `split_prob`, is cut in two along a random straight line.

    The line has a uniformly random direction and crosses the instance between its 25% and 75%
    quantiles along that direction, so both halves are non-empty (for a non-convex instance a
    "half" may be several pieces); the far half gets a new id.
    """
    out = ids.copy()
    next_id = int(ids.max()) + 1
    for instance in _instance_ids(ids):
        if rng.random() >= split_prob:
            continue
        rows, cols = np.nonzero(ids == instance)
        angle = rng.uniform(0.0, 2.0 * math.pi)
        along = cols * math.cos(angle) + rows * math.sin(angle)
        cut = np.quantile(along, rng.uniform(0.25, 0.75))
        far = along > cut
        if far.all() or not far.any():  # too small to cut (all pixels on one projection value)
            continue
        out[rows[far], cols[far]] = next_id
        next_id += 1
    return out


def erode_borders(ids: np.ndarray, erode_px: int) -> np.ndarray:
    """Set to 0 (no mask) every pixel within `erode_px` pixels (chessboard) of another id or of 0.

    Instances touching the image edge are not eroded there. Thin instances can vanish entirely,
    as thin parts do in real automatic masks.
    """
    from scipy.ndimage import maximum_filter, minimum_filter

    out = ids.copy()
    for _ in range(max(0, int(erode_px))):
        border = maximum_filter(out, size=3, mode="nearest") != minimum_filter(out, size=3, mode="nearest")
        out[border] = 0
    return out


def permute_ids(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relabel the instances with a random permutation of 1..K (0 stays 0): same partition, new ids."""
    present = _instance_ids(ids)
    lookup = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    lookup[present] = rng.permutation(len(present)) + 1
    return lookup[ids]


def corrupt_instance_map(
    ids: np.ndarray,
    rng: np.random.Generator,
    merge_prob: float = 0.5,
    split_prob: float = 0.3,
    erode_px: int = 1,
) -> np.ndarray:
    """A noisy, view-inconsistent version of one view's instance map (0 = no mask).

    In this order: (a) with probability `merge_prob` two random instances of the view are merged;
    (b) each instance is, with probability `split_prob`, cut in two along a random line, one half
    getting a new id; (c) the borders of every instance (the cuts included) are eroded by
    `erode_px` pixels to 0; (d) the ids are permuted. Everything random comes from `rng`, so one
    generator per view (seeded from the view) makes each view's noise independent and repeatable.
    Returns a new array of the input's shape and dtype; the input is not modified.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"expected a 2-D instance map, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer) or ids.min(initial=0) < 0:
        raise ValueError(f"expected integer instance ids >= 0 (0 = no mask), got {ids.dtype}")
    work = ids.astype(np.int64)
    work = merge_two_instances(work, rng, merge_prob)
    work = split_instances(work, rng, split_prob)
    work = erode_borders(work, erode_px)
    work = permute_ids(work, rng)
    if work.max(initial=0) > np.iinfo(ids.dtype).max:
        raise ValueError(f"{work.max()} instances do not fit in {ids.dtype}")
    return work.astype(ids.dtype)


@dataclass
class NoiseConfig:
    merge_prob: float = 0.5
    """Per view and level: probability that two random instances are merged into one."""
    split_prob: float = 0.3
    """Per instance: probability that it is cut in two along a random line."""
    erode_px: int = 1
    """Pixels of every instance border set to 0 (no mask)."""


def write_noisy_scene(clean: Path, noisy: Path, noise: NoiseConfig, seed: int) -> Dict[str, float]:
    """Copy the scene `clean` to `noisy` and corrupt its coarse/ and fine/ masks, one generator per (view, level).

    Returns statistics of the corruption (mean instances per view before and after, fraction of
    masked pixels kept) per level.
    """
    if noisy.exists():
        shutil.rmtree(noisy)
    shutil.copytree(clean, noisy)
    stats: Dict[str, float] = {}
    for level_index, level in enumerate(LEVELS):
        before, after, kept, masked = [], [], 0, 0
        for view_index, path in enumerate(sorted((noisy / level).glob("*.png"))):
            with Image.open(path) as im:
                ids = np.array(im).astype(np.uint16)
            rng = np.random.default_rng([seed, level_index, view_index])
            out = corrupt_instance_map(ids, rng, noise.merge_prob, noise.split_prob, noise.erode_px)
            Image.fromarray(np.ascontiguousarray(out, dtype="<u2")).save(path)
            before.append(len(_instance_ids(ids)))
            after.append(len(_instance_ids(out)))
            masked += int((ids > 0).sum())
            kept += int((out > 0).sum())
        stats[f"{level}_instances_per_view_clean"] = float(np.mean(before))
        stats[f"{level}_instances_per_view_noisy"] = float(np.mean(after))
        stats[f"{level}_masked_pixels_kept"] = kept / max(masked, 1)
    return stats
