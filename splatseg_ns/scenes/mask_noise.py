"""Masks that fail the way automatic masks fail, made from a scene's exact two-level masks.

SAM-family generators are ambiguous about granularity and inconsistent across views (SAM, Kirillov et
al. 2023, Sec. 3 "ambiguity-aware": one point means a whole, a part or a subpart, and the automatic
generator keeps whichever of the three survives its predicted-IoU, stability and NMS filters; Sec. 7
"Limitations": it "can miss fine structures, hallucinates small disconnected components at times,
and does not produce boundaries as crisply"; Click-Gaussian Sec. 3.3, GARField and SAGA build on the
same observation). `corrupt_view` makes one view's coarse and fine masks fail in six ways, each a
function below, in this order:

1. granularity flips (`flip_granularity`): an object's fine masks are the whole object (no smaller
   mask survived), or its coarse mask is only its largest part, the rest unmasked (a shade without
   its pole);
2. sibling merges (`merge_siblings`): two touching parts of one object share a fine mask;
3. missing thin parts (`drop_thin_parts`): a part gets no fine mask with a probability that grows
   as it gets thinner (its half-width in pixels, the largest distance from its border inside it);
4. merges with the touching neighbour (`merge_neighbours`: a pair of touching instances becomes one
   mask; at the fine level the two parts along their border merge, so the levels stay
   consistent), random merges of any two instances (`merge_random`, the former noise), and splits
   (`split_instances`: a straight cut; a coarse cut cuts the object's fine masks too);
5. borders off in both directions (`shift_borders`): each mask eroded (gaps) or dilated (bleeding
   into the neighbour or the background) by up to `border_px` pixels;
6. spurious masks (`add_spurious`): small blobs on the background and on the largest instance (the
   floor), on both levels; and every id renumbered (`permute_ids`).

Two named strengths (`NOISE_LEVELS`). Rates are estimates, not measurements (no SAM weights run on
this machine), each from what the sources above describe:

- `mild`: the former noise of `bench_gfl_noisy_masks` (a random merge in half of the views, a third
  of the instances split, 1 px eroded): label noise that the coarse level disambiguates.
- `strong`, every failure at once, per view:
  - whole-object fine masks, 0.25 per multi-part object: SAM returns three nested masks per prompt
    and the generator keeps about one of them after NMS (IoU 0.7), so for a two-level object the
    part-level mask losing to the whole in a quarter of the views is conservative;
  - coarse mask = one part, 0.15 per multi-part object: the opposite choice, rarer because the
    generator's stability score favours large masks;
  - sibling merges, 0.2 per pair of touching parts: adjacent parts of similar colour (a snowman's
    body and head) are one "part" in SAM's subpart/part ambiguity;
  - thin parts missed with probability 0.6 at a half-width of 1 px, falling linearly to 0 at 6 px
    (SAM Sec. 7: fine structures missed; at 128 px the table legs and the lamp's pole are 1-2 px
    in half-width, so they go unmasked in about half of the views);
  - touching-neighbour merges, 0.15 per touching pair, the floor excluded (a mug with the table it
    stands on); splits, 0.15
    per instance (specular highlights and occlusion edges cut SAM's masks);
  - borders shifted by -3..+3 px, uniform per mask: SA-1B's automatic masks reach IoU > 0.9 with
    professionally corrected ones for 94% of masks (SAM Sec. 5), and for a 20-40 px object 0.9 IoU
    is a border off by 1-2 px all round; 3 px covers the worse tail;
  - spurious masks, 3 per view (Poisson mean), radius 2-5 px: SAM's "small disconnected
    components", and the masks automatic generation puts on floor and background texture.

Each view's noise comes from one generator seeded by (seed, view), so views are independent and a
scene is repeatable; `write_noisy_scene` copies a scene with its masks corrupted.
"""

from __future__ import annotations

import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

from splatseg_ns.core.features import LEVELS


@dataclass(frozen=True)
class NoiseConfig:
    """Per-view rates of each failure of automatic masks (see the module docstring for their sources)."""

    whole_object_fine: float = 0.0
    """Per object of several parts: probability that its fine masks are one mask, the whole object."""
    part_as_object: float = 0.0
    """Per object of several parts: probability that its coarse mask is only its largest part, the rest unmasked."""
    sibling_merge: float = 0.0
    """Per pair of touching parts of one object: probability that they share one fine mask."""
    thin_miss: float = 0.0
    """Probability that a part of half-width 1 px gets no fine mask; falls linearly to 0 at `thin_px`."""
    thin_px: float = 6.0
    """Half-width (px) from which a part is never missed for being thin."""
    neighbour_merge: float = 0.0
    """Per pair of touching instances (the floor excluded): probability that they are one mask, at both levels."""
    merge_prob: float = 0.5
    """Per view and level: probability that two random instances are merged into one."""
    split_prob: float = 0.3
    """Per instance and level: probability that it is cut in two along a random line."""
    erode_px: int = 1
    """Pixels eroded from every mask's border (to no mask), before the random shifts."""
    border_px: int = 0
    """Each mask's border moves by a uniform whole number of pixels in [-border_px, border_px]."""
    spurious_per_view: float = 0.0
    """Mean number (Poisson) of small spurious masks per view, on the background and the largest instance."""


NOISE_LEVELS: Dict[str, NoiseConfig] = {
    "mild": NoiseConfig(),
    "strong": NoiseConfig(whole_object_fine=0.25, part_as_object=0.15, sibling_merge=0.2, thin_miss=0.6,
                          thin_px=6.0, neighbour_merge=0.15, merge_prob=0.0, split_prob=0.15, erode_px=0,
                          border_px=3, spurious_per_view=3.0),
}
"""The two named strengths of `splatseg demo-data --mask-noise` and the benchmarks."""


def instance_ids(ids: np.ndarray) -> np.ndarray:
    values = np.unique(ids)
    return values[values > 0]


def _shared_borders(ids: np.ndarray) -> Counter:
    """{(a, b): pixel edges between instance a and instance b (a < b, both > 0)} over 4-neighbours."""
    pairs: Counter = Counter()
    for a, b in ((ids[:, :-1], ids[:, 1:]), (ids[:-1, :], ids[1:, :])):
        touching = (a != b) & (a > 0) & (b > 0)
        lo, hi = np.minimum(a[touching], b[touching]), np.maximum(a[touching], b[touching])
        pairs.update(zip(lo.tolist(), hi.tolist()))
    return pairs


def part_tree(coarse: np.ndarray, fine: np.ndarray) -> Dict[int, List[int]]:
    """{coarse id: the fine ids whose pixels lie mostly in it}: which parts make up which object."""
    tree: Dict[int, List[int]] = {}
    for part in instance_ids(fine).tolist():
        owner = _owner(coarse, fine, part)
        if owner:
            tree.setdefault(owner, []).append(part)
    return tree


def flip_granularity(coarse: np.ndarray, fine: np.ndarray, tree: Dict[int, List[int]], rng: np.random.Generator,
                     whole_object_fine: float, part_as_object: float) -> Tuple[np.ndarray, np.ndarray]:
    """Per object of several visible parts: its fine masks become one (the whole object) with probability
    `whole_object_fine`; its coarse mask shrinks to its largest part with probability `part_as_object`."""
    out_coarse, out_fine = coarse.copy(), fine.copy()
    for obj, parts in sorted(tree.items()):
        if len(parts) < 2:
            continue
        if rng.random() < whole_object_fine:
            out_fine[np.isin(fine, parts)] = parts[0]
        if rng.random() < part_as_object:
            largest = max(parts, key=lambda p: int((fine == p).sum()))
            out_coarse[(coarse == obj) & (fine != largest)] = 0
    return out_coarse, out_fine


def merge_siblings(fine: np.ndarray, tree: Dict[int, List[int]], rng: np.random.Generator, prob: float) -> np.ndarray:
    """Each pair of touching parts of one object shares one fine mask with probability `prob`."""
    fine = fine.copy()
    borders = _shared_borders(fine)
    for parts in tree.values():
        group = {part: part for part in parts}  # part -> the id it now shares
        for a, b in sorted(pair for pair in borders if set(pair) <= set(parts)):
            if rng.random() < prob and group[a] != group[b]:
                absorbed, keep = group[b], group[a]
                fine[fine == absorbed] = keep
                group = {part: keep if now == absorbed else now for part, now in group.items()}
    return fine


def half_width(mask: np.ndarray) -> float:
    """The largest distance (px) from the mask's border to a pixel inside it: 1 for a line 1-2 px wide."""
    if not mask.any():
        return 0.0
    return float(ndimage.distance_transform_edt(np.pad(mask, 1)).max())


def thin_miss_probability(width: float, thin_miss: float, thin_px: float) -> float:
    """`thin_miss` at a half-width of 1 px, falling linearly to 0 at `thin_px`."""
    if thin_px <= 1.0:
        return 0.0
    return float(thin_miss * np.clip((thin_px - width) / (thin_px - 1.0), 0.0, 1.0))


def drop_thin_parts(fine: np.ndarray, rng: np.random.Generator, thin_miss: float, thin_px: float) -> np.ndarray:
    """Each fine mask gets no mask (0) with `thin_miss_probability` of its half-width."""
    fine = fine.copy()
    for part in instance_ids(fine).tolist():
        mask = fine == part
        if rng.random() < thin_miss_probability(half_width(mask), thin_miss, thin_px):
            fine[mask] = 0
    return fine


def merge_neighbours(coarse: np.ndarray, fine: np.ndarray, rng: np.random.Generator, prob: float
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """Each pair of touching coarse instances merges with probability `prob`; at the fine level, the two parts
    that share the longest border across the pair merge too. The view's largest instance (the floor) takes
    part in none: SAM merges things of a similar scale (a mug with its table), and a mask bleeding into the
    floor is `shift_borders`' failure."""
    coarse, fine = coarse.copy(), fine.copy()
    largest = _most_common(coarse)  # the view's largest instance
    pairs = sorted(pair for pair in _shared_borders(coarse) if largest not in pair)
    now = {int(i): int(i) for i in instance_ids(coarse)}  # exact id -> the id it has after earlier merges
    for a, b in pairs:
        if rng.random() >= prob:
            continue
        a_now, b_now = now[a], now[b]
        if a_now == b_now:  # already one mask through an earlier merge
            continue
        now = {i: a_now if j == b_now else j for i, j in now.items()}
        across = {pair: n for pair, n in _shared_borders(fine).items()
                  if {_owner(coarse, fine, pair[0]), _owner(coarse, fine, pair[1])} == {a_now, b_now}}
        if across:
            keep, absorbed = max(across, key=across.get)
            fine[fine == absorbed] = keep
        coarse[coarse == b_now] = a_now
    return coarse, fine


def _most_common(ids: np.ndarray) -> int:
    """The most frequent id > 0 among `ids`, 0 when there is none."""
    present = ids[ids > 0]
    return int(np.bincount(present).argmax()) if present.size else 0


def _owner(coarse: np.ndarray, fine: np.ndarray, part: int) -> int:
    """The coarse instance most of the fine mask `part` lies in (0: none)."""
    return _most_common(coarse[fine == part])


def merge_random(ids: np.ndarray, rng: np.random.Generator, prob: float) -> np.ndarray:
    """With probability `prob`, two distinct instances of this view get the same id."""
    present = instance_ids(ids)
    if rng.random() >= prob or len(present) < 2:
        return ids
    keep, absorbed = rng.choice(present, size=2, replace=False)
    return np.where(ids == absorbed, keep, ids)


def _far_side(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """bool [H, W]: the pixels of `region` beyond a straight cut in a uniformly random direction, placed between
    the region's 25% and 75% quantiles along it (both sides non-empty unless the region is a single line)."""
    rows, cols = np.nonzero(region)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    along = cols * math.cos(angle) + rows * math.sin(angle)
    far = along > np.quantile(along, rng.uniform(0.25, 0.75))
    out = np.zeros_like(region)
    if far.any() and not far.all():
        out[rows[far], cols[far]] = True
    return out


def split_instances(ids: np.ndarray, rng: np.random.Generator, prob: float, nested: Iterable[np.ndarray] = ()
                    ) -> Tuple[np.ndarray, List[np.ndarray]]:
    """Each instance, with probability `prob`, is cut in two along a random line, the far side getting a new id;
    each map in `nested` (the finer level) is cut along the same line: its masks' far pixels get new ids too."""
    out, nested = ids.copy(), [n.copy() for n in nested]
    next_id = int(ids.max(initial=0)) + 1
    for instance in instance_ids(ids).tolist():
        if rng.random() >= prob:
            continue
        far = _far_side(ids == instance, rng)
        if not far.any():
            continue
        out[far] = next_id
        next_id += 1
        for finer in nested:
            fresh = int(finer.max(initial=0)) + 1
            for part in instance_ids(finer[far]).tolist():
                finer[far & (finer == part)] = fresh
                fresh += 1
    return out, nested


def shift_borders(ids: np.ndarray, shifts: Dict[int, int]) -> np.ndarray:
    """Each mask's border moved by shifts[id] pixels (chessboard): eroded to no mask when negative, dilated over
    its neighbours and the background when positive (dilations after erosions, in id order). A mask is not eroded
    along the image's edge; one thinner than its erosion vanishes, as thin parts do."""
    out = ids.copy()
    cross = np.ones((3, 3), dtype=bool)
    for instance, shift in sorted(shifts.items()):
        if shift < 0:
            mask = ids == instance
            kept = ndimage.binary_erosion(mask, cross, iterations=-shift, border_value=1)
            out[mask & ~kept] = 0
    for instance, shift in sorted(shifts.items()):
        if shift > 0:
            out[ndimage.binary_dilation(ids == instance, cross, iterations=shift)] = instance
    return out


def random_shifts(ids: np.ndarray, rng: np.random.Generator, erode_px: int, border_px: int) -> Dict[int, int]:
    """{id: border shift}: -erode_px plus a uniform whole number in [-border_px, border_px]."""
    return {int(i): int(rng.integers(-border_px, border_px + 1)) - erode_px for i in instance_ids(ids)}


def add_spurious(maps: List[np.ndarray], where: np.ndarray, rng: np.random.Generator, mean_count: float
                 ) -> List[np.ndarray]:
    """Poisson(`mean_count`) discs of radius 2-5 px centred on random pixels of `where`, each a new id in every
    map of `maps` (the same blob at both levels: a texture patch is a whole and a part at its scale)."""
    maps = [m.copy() for m in maps]
    candidates = np.argwhere(where)
    if not len(candidates):
        return maps
    rows, cols = np.indices(where.shape)
    for _ in range(int(rng.poisson(mean_count))):
        r, c = candidates[rng.integers(len(candidates))]
        disc = (rows - r) ** 2 + (cols - c) ** 2 <= rng.uniform(2.0, 5.0) ** 2
        for m in maps:
            m[disc] = int(m.max(initial=0)) + 1
    return maps


def permute_ids(ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Relabel the instances with a random permutation of 1..K (0 stays 0): same partition, new ids."""
    present = instance_ids(ids)
    lookup = np.zeros(int(ids.max(initial=0)) + 1, dtype=np.int64)
    lookup[present] = rng.permutation(len(present)) + 1
    return lookup[ids]


def corrupt_view(coarse: np.ndarray, fine: np.ndarray, noise: NoiseConfig, rng: np.random.Generator
                 ) -> Tuple[np.ndarray, np.ndarray]:
    """One view's coarse and fine instance maps (0 = no mask), failing as `noise` says (module docstring, in its
    order). Everything random comes from `rng`. Returns new arrays of the inputs' shape and dtype."""
    inputs = [np.asarray(coarse), np.asarray(fine)]
    for level, ids in zip(LEVELS, inputs):
        if ids.ndim != 2 or ids.shape != inputs[0].shape:
            raise ValueError(f"expected two 2-D instance maps of one shape, got {level} {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer) or ids.min(initial=0) < 0:
            raise ValueError(f"expected integer instance ids >= 0 (0 = no mask), got {level} {ids.dtype}")
    c, f = (ids.astype(np.int64) for ids in inputs)
    background = (c == 0) | (c == _most_common(c))  # before any noise: where spurious masks go
    tree = part_tree(c, f)
    c, f = flip_granularity(c, f, tree, rng, noise.whole_object_fine, noise.part_as_object)
    f = merge_siblings(f, tree, rng, noise.sibling_merge)
    f = drop_thin_parts(f, rng, noise.thin_miss, noise.thin_px)
    c, f = merge_neighbours(c, f, rng, noise.neighbour_merge)
    c, f = merge_random(c, rng, noise.merge_prob), merge_random(f, rng, noise.merge_prob)
    c, (f,) = split_instances(c, rng, noise.split_prob, nested=[f])
    f, _ = split_instances(f, rng, noise.split_prob)
    c = shift_borders(c, random_shifts(c, rng, noise.erode_px, noise.border_px))
    f = shift_borders(f, random_shifts(f, rng, noise.erode_px, noise.border_px))
    c, f = add_spurious([c, f], background, rng, noise.spurious_per_view)
    outputs = []
    for level, ids, source in zip(LEVELS, (permute_ids(c, rng), permute_ids(f, rng)), inputs):
        if ids.max(initial=0) > np.iinfo(source.dtype).max:
            raise ValueError(f"{ids.max()} {level} instances do not fit in {source.dtype}")
        outputs.append(ids.astype(source.dtype))
    return outputs[0], outputs[1]


def noise_config(name: str) -> NoiseConfig:
    """The named strength ('mild' or 'strong'); a clear error for anything else."""
    if name not in NOISE_LEVELS:
        raise ValueError(f"Unknown mask noise {name!r}: use one of {', '.join(NOISE_LEVELS)} (or 'none').")
    return NOISE_LEVELS[name]


def corrupt_scene_masks(scene: Path, noise: NoiseConfig, seed: int) -> Dict[str, float]:
    """Corrupt the coarse/ and fine/ masks of the scene folder `scene` in place, one generator per view.

    Returns statistics (mean instances per view before and after, fraction of masked pixels kept) per level."""
    names = sorted(p.name for p in (scene / LEVELS[0]).glob("*.png"))
    totals = {level: {"before": [], "after": [], "kept": 0, "masked": 0} for level in LEVELS}
    for view_index, name in enumerate(names):
        exact = []
        for level in LEVELS:
            with Image.open(scene / level / name) as im:
                exact.append(np.array(im).astype(np.uint16))
        noisy = corrupt_view(exact[0], exact[1], noise, np.random.default_rng([seed, view_index]))
        for level, ids, out in zip(LEVELS, exact, noisy):
            Image.fromarray(np.ascontiguousarray(out, dtype="<u2")).save(scene / level / name)
            t = totals[level]
            t["before"].append(len(instance_ids(ids)))
            t["after"].append(len(instance_ids(out)))
            t["masked"] += int((ids > 0).sum())
            t["kept"] += int(((out > 0) & (ids > 0)).sum())
    stats: Dict[str, float] = {}
    for level, t in totals.items():
        stats[f"{level}_instances_per_view_clean"] = float(np.mean(t["before"])) if names else 0.0
        stats[f"{level}_instances_per_view_noisy"] = float(np.mean(t["after"])) if names else 0.0
        stats[f"{level}_masked_pixels_kept"] = t["kept"] / max(t["masked"], 1)
    return stats


def write_noisy_scene(clean: Path, noisy: Path, noise: NoiseConfig, seed: int) -> Dict[str, float]:
    """Copy the scene `clean` to `noisy` and corrupt its masks (`corrupt_scene_masks`); returns its statistics."""
    if noisy.exists():
        shutil.rmtree(noisy)
    shutil.copytree(clean, noisy)
    return corrupt_scene_masks(noisy, noise, seed)

