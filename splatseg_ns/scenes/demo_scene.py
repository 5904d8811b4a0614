"""Procedural demo scene with exact two-level (object / part) instance masks.

Why this exists
---------------
splatseg needs a scene to demo and test click-to-segment on, and the tests must
not depend on a download.  This module generates one from scratch: a handful of
small objects, each made of 2-3 coloured parts built from analytic primitives,
rendered by vectorised numpy ray casting.  Because the geometry is analytic the
instance masks are *exact* (the id of the closest primitive hit by each pixel's
centre ray), so they double as ground truth:

* ``coarse`` masks: one id per whole object (object index + 1),
* ``fine`` masks: one globally unique id per part (1..num_parts),

with 0 meaning background in both.

Output layout (nerfstudio ``nerfstudio-data`` format)::

    output_dir/
        transforms.json          # OPENCV intrinsics (no distortion), frames, ply_file_path
        images/frame_00001.png   # 8-bit RGB, white background, 2x2 supersampled
        coarse/frame_00001.png   # 16-bit ("I;16") object ids, 0 = background
        fine/frame_00001.png     # 16-bit ("I;16") part ids, 0 = background
        sparse_pc.ply            # binary little-endian PLY: x,y,z float, red,green,blue uchar
        scene.json               # ground truth: objects, parts, ids, colours, 3D centres

Masks share the image's file stem, which is how they are looked up.

Conventions
-----------
* World frame: right-handed, +Z up.  The objects stand on (or float just above)
  the z = 0 plane inside a radius of about 1 around the origin.  There is no floor.
* ``transform_matrix`` is camera-to-world in the nerfstudio / OpenGL convention:
  the camera looks down its -Z axis, +X is right and +Y is up in the image.
* Pixel (u, v) (u = column from the left, v = row from the top) has its centre at
  (u + 0.5, v + 0.5); its ray direction in camera coordinates is
  ``((u + 0.5 - cx) / fx, -(v + 0.5 - cy) / fy, -1)``.  Conversely a camera-frame
  point (x, y, z) with z < 0 projects to ``u = cx + fx * x / -z``, ``v = cy - fy * y / -z``.
* All 3D quantities in ``scene.json`` (centres, bounding boxes) and the PLY points
  are in this same world frame (nerfstudio's dataparser later re-orients, centres
  and scales poses and points together).
* Shading is view-independent (Lambertian + ambient, fixed light direction), so a
  Gaussian splatting model with degree-0 colours fits it exactly.
* Everything is deterministic for a given ``seed`` (the seed moves/rotates the
  objects slightly and drives the point cloud sampling).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "write_demo_scene",
    "build_scene",
    "camera_poses",
    "intrinsics",
    "render_view",
    "DemoScene",
    "BACKGROUND_COLOR",
]

BACKGROUND_COLOR: Tuple[int, int, int] = (255, 255, 255)
LIGHT_DIR = np.array([0.45, -0.35, 1.0]) / np.linalg.norm([0.45, -0.35, 1.0])
AMBIENT = 0.4
DIFFUSE = 0.6

CAMERA_DISTANCE = 3.5
FOV_DEG = 45.0
RING_ELEVATIONS_DEG = (20.0, 45.0)
LOOK_AT = np.array([0.0, 0.0, 0.3])
NUM_SEED_POINTS = 4000
POINT_NOISE_STD = 0.004

_EPS = 1e-9


# ----------------------------------------------------------------------------
# Geometry: convex primitives as intersections of simple constraints
# ----------------------------------------------------------------------------


@dataclass
class Convex:
    """A convex solid = intersection of slabs, balls and infinite cylinders.

    ``slabs``: (unit axis a, lo, hi) meaning lo <= p.a <= hi.
    ``balls``: (centre c, radius r) meaning |p - c| <= r.
    ``cylinders``: (point c, unit axis a, radius r) meaning dist(p, line) <= r.
    """

    slabs: List[Tuple[np.ndarray, float, float]] = field(default_factory=list)
    balls: List[Tuple[np.ndarray, float]] = field(default_factory=list)
    cylinders: List[Tuple[np.ndarray, np.ndarray, float]] = field(default_factory=list)

    # -- ray intersection -------------------------------------------------
    def intersect(self, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Entry distance and index of the entering constraint for rays o + t d.

        ``o`` is (3,) or (N, 3); ``d`` is (N, 3) with unit rows.  Returns
        (t, which) where t = inf for misses (or rays starting inside).
        """
        n = d.shape[0]
        t_in = np.full(n, -np.inf)
        t_out = np.full(n, np.inf)
        which = np.full(n, -1, dtype=np.int64)
        k = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            for a, lo, hi in self.slabs:
                s = o @ a
                dd = d @ a
                t1 = (lo - s) / dd
                t2 = (hi - s) / dd
                enter = np.minimum(t1, t2)
                leave = np.maximum(t1, t2)
                par = np.abs(dd) < _EPS
                if np.any(par):
                    s_arr = np.broadcast_to(s, dd.shape)
                    inside = (s_arr >= lo) & (s_arr <= hi)
                    enter = np.where(par, np.where(inside, -np.inf, np.inf), enter)
                    leave = np.where(par, np.where(inside, np.inf, -np.inf), leave)
                k = self._update(t_in, t_out, which, enter, leave, k)
            for c, r in self.balls:
                oc = o - c
                b = d @ oc if oc.ndim == 1 else np.einsum("ij,ij->i", d, oc)
                cc = (oc * oc).sum(-1) - r * r
                disc = b * b - cc
                hit = disc >= 0
                sq = np.sqrt(np.where(hit, disc, 0.0))
                enter = np.where(hit, -b - sq, np.inf)
                leave = np.where(hit, -b + sq, -np.inf)
                k = self._update(t_in, t_out, which, enter, leave, k)
            for c, a, r in self.cylinders:
                oc = o - c
                dp = d - np.outer(d @ a, a)
                op = oc - (oc @ a)[..., None] * a if oc.ndim == 2 else oc - (oc @ a) * a
                aa = (dp * dp).sum(-1)
                bb = dp @ op if op.ndim == 1 else np.einsum("ij,ij->i", dp, op)
                cc = (op * op).sum(-1) - r * r
                disc = bb * bb - aa * cc
                par = aa < _EPS
                hit = (disc >= 0) & ~par
                sq = np.sqrt(np.where(hit, disc, 0.0))
                safe_a = np.where(par, 1.0, aa)
                enter = np.where(hit, (-bb - sq) / safe_a, np.inf)
                leave = np.where(hit, (-bb + sq) / safe_a, -np.inf)
                if np.any(par):
                    inside = np.broadcast_to(cc <= 0, par.shape)
                    enter = np.where(par, np.where(inside, -np.inf, np.inf), enter)
                    leave = np.where(par, np.where(inside, np.inf, -np.inf), leave)
                k = self._update(t_in, t_out, which, enter, leave, k)
        valid = (t_in <= t_out) & (t_in > 1e-6) & np.isfinite(t_in)
        return np.where(valid, t_in, np.inf), which

    @staticmethod
    def _update(t_in, t_out, which, enter, leave, k):
        better = enter > t_in
        t_in[better] = enter[better]
        which[better] = k
        np.minimum(t_out, leave, out=t_out)
        return k + 1

    def normals(self, p: np.ndarray, which: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Outward normals at surface points ``p`` entered through constraint ``which``."""
        nrm = np.zeros_like(p)
        k = 0
        for a, _lo, _hi in self.slabs:
            m = which == k
            if np.any(m):
                sign = np.where(d[m] @ a > 0, -1.0, 1.0)
                nrm[m] = sign[:, None] * a
            k += 1
        for c, r in self.balls:
            m = which == k
            if np.any(m):
                nrm[m] = (p[m] - c) / r
            k += 1
        for c, a, _r in self.cylinders:
            m = which == k
            if np.any(m):
                v = p[m] - c
                v = v - np.outer(v @ a, a)
                nrm[m] = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)
            k += 1
        return nrm

    # -- implicit -----------------------------------------------------------
    def value(self, p: np.ndarray) -> np.ndarray:
        """max over constraints of their signed distances: <= 0 inside, 0 on the surface."""
        vals = [np.full(p.shape[0], -np.inf)]
        for a, lo, hi in self.slabs:
            s = p @ a
            vals.append(np.maximum(lo - s, s - hi))
        for c, r in self.balls:
            vals.append(np.linalg.norm(p - c, axis=-1) - r)
        for c, a, r in self.cylinders:
            v = p - c
            v = v - np.outer(v @ a, a)
            vals.append(np.linalg.norm(v, axis=-1) - r)
        return np.max(np.stack(vals), axis=0)


def _unit(v: Sequence[float]) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def box(center: np.ndarray, half: Sequence[float], rot: np.ndarray) -> Convex:
    """Box with half extents ``half`` along the columns of rotation ``rot``."""
    center = np.asarray(center, dtype=np.float64)
    slabs = []
    for i in range(3):
        a = rot[:, i].astype(np.float64)
        s = float(center @ a)
        slabs.append((a, s - half[i], s + half[i]))
    return Convex(slabs=slabs)


def cylinder(p0: np.ndarray, p1: np.ndarray, radius: float) -> Convex:
    """Capped solid cylinder from point p0 to p1."""
    p0 = np.asarray(p0, dtype=np.float64)
    p1 = np.asarray(p1, dtype=np.float64)
    a = _unit(p1 - p0)
    return Convex(slabs=[(a, float(p0 @ a), float(p1 @ a))], cylinders=[(p0, a, float(radius))])


def sphere(center: np.ndarray, radius: float) -> Convex:
    return Convex(balls=[(np.asarray(center, dtype=np.float64), float(radius))])


def hemisphere(center: np.ndarray, radius: float, up: np.ndarray) -> Convex:
    """Solid half ball {|p - c| <= r, (p - c).up >= 0} (flat side closed)."""
    center = np.asarray(center, dtype=np.float64)
    up = _unit(up)
    s = float(center @ up)
    return Convex(slabs=[(up, s, s + radius)], balls=[(center, float(radius))])


def capsule(p0: np.ndarray, p1: np.ndarray, radius: float) -> List[Convex]:
    return [cylinder(p0, p1, radius), sphere(p0, radius), sphere(p1, radius)]


# ----------------------------------------------------------------------------
# Scene description
# ----------------------------------------------------------------------------


@dataclass
class Part:
    name: str
    fine_id: int
    color: Tuple[int, int, int]
    solids: List[Convex]

    def value(self, p: np.ndarray) -> np.ndarray:
        return np.min(np.stack([s.value(p) for s in self.solids]), axis=0)


@dataclass
class SceneObject:
    name: str
    coarse_id: int
    parts: List[Part]


@dataclass
class DemoScene:
    objects: List[SceneObject]

    @property
    def parts(self) -> List[Part]:
        return [p for o in self.objects for p in o.parts]

    def part_to_object(self) -> np.ndarray:
        """Lookup table: fine id -> coarse id (index 0 = background)."""
        lut = np.zeros(len(self.parts) + 1, dtype=np.uint16)
        for o in self.objects:
            for p in o.parts:
                lut[p.fine_id] = o.coarse_id
        return lut

    def colors(self) -> np.ndarray:
        """Lookup table: fine id -> base RGB in [0, 1] (index 0 = background)."""
        lut = np.zeros((len(self.parts) + 1, 3))
        lut[0] = np.asarray(BACKGROUND_COLOR) / 255.0
        for p in self.parts:
            lut[p.fine_id] = np.asarray(p.color) / 255.0
        return lut

    def value(self, p: np.ndarray) -> np.ndarray:
        """Implicit function of the whole scene: <= 0 inside, ~= distance near surfaces."""
        return np.min(np.stack([part.value(p) for part in self.parts]), axis=0)

    def cast(self, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Closest hit for rays o + t d: (t, fine id (0 = miss), outward normal).

        ``o`` is (3,) (shared origin) or (N, 3); ``d`` is (N, 3) with unit rows.
        Rays are first culled against each object's bounding sphere.
        """
        n = d.shape[0]
        best_t = np.full(n, np.inf)
        best_id = np.zeros(n, dtype=np.int64)
        best_solid = np.full(n, -1, dtype=np.int64)
        best_which = np.full(n, -1, dtype=np.int64)
        solids: List[Convex] = []
        for obj in self.objects:
            centre, radius = self._bounding_sphere(obj)
            t_b, _ = sphere(centre, radius).intersect(o, d)
            idx = np.nonzero(np.isfinite(t_b))[0]
            if len(idx) == 0:
                solids.extend(s for part in obj.parts for s in part.solids)
                continue
            o_sub = o if o.ndim == 1 else o[idx]
            d_sub = d[idx]
            for part in obj.parts:
                for s in part.solids:
                    t, which = s.intersect(o_sub, d_sub)
                    closer = t < best_t[idx]
                    sel = idx[closer]
                    best_t[sel] = t[closer]
                    best_id[sel] = part.fine_id
                    best_solid[sel] = len(solids)
                    best_which[sel] = which[closer]
                    solids.append(s)
        hit = np.isfinite(best_t)
        p = o + np.where(hit, best_t, 0.0)[:, None] * d
        nrm = np.zeros((n, 3))
        for i, s in enumerate(solids):
            m = best_solid == i
            if np.any(m):
                nrm[m] = s.normals(p[m], best_which[m], d[m])
        return best_t, best_id, nrm

    def _bounding_sphere(self, obj: "SceneObject") -> Tuple[np.ndarray, float]:
        cache = self.__dict__.setdefault("_bsphere_cache", {})
        if obj.coarse_id not in cache:
            lo = np.min([self._part_bounds(p)[0] for p in obj.parts], axis=0)
            hi = np.max([self._part_bounds(p)[1] for p in obj.parts], axis=0)
            cache[obj.coarse_id] = ((lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2) + 1e-3)
        return cache[obj.coarse_id]

    def _part_bounds(self, part: Part, margin: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
        # Bound each solid coarsely by its balls / slabs along world axes.
        lo = np.full(3, np.inf)
        hi = np.full(3, -np.inf)
        for s in part.solids:
            slo, shi = _solid_bounds(s)
            lo = np.minimum(lo, slo)
            hi = np.maximum(hi, shi)
        return lo - margin, hi + margin


def _solid_bounds(s: Convex) -> Tuple[np.ndarray, np.ndarray]:
    """Conservative world AABB of a convex solid built by the helpers above."""
    lo = np.full(3, -np.inf)
    hi = np.full(3, np.inf)
    for c, r in s.balls:
        lo = np.maximum(lo, c - r)
        hi = np.minimum(hi, c + r)
    if s.cylinders:
        # cylinder(): one infinite cylinder capped by one slab along its axis.
        (c, a, r), (_, slo, shi) = s.cylinders[0], s.slabs[0]
        p0 = c + (slo - c @ a) * a
        p1 = c + (shi - c @ a) * a
        ext = r * np.sqrt(np.clip(1.0 - a * a, 0.0, 1.0))
        lo = np.maximum(lo, np.minimum(p0, p1) - ext)
        hi = np.minimum(hi, np.maximum(p0, p1) + ext)
    elif len(s.slabs) == 3 and not s.balls:
        # box(): three orthogonal slabs.
        rot = np.stack([a for a, _, _ in s.slabs], axis=1)
        half = np.array([(h - l) / 2 for _, l, h in s.slabs])
        centre = rot @ np.array([(h + l) / 2 for _, l, h in s.slabs])
        ext = np.abs(rot) @ half
        lo = np.maximum(lo, centre - ext)
        hi = np.minimum(hi, centre + ext)
    return lo, hi


def _grid_centroid(fn, lo: np.ndarray, hi: np.ndarray, step: float) -> Tuple[np.ndarray, int]:
    axes = [np.arange(lo[i] + step / 2, hi[i], step) for i in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = fn(g) <= 0
    pts = g[inside]
    if len(pts) == 0:
        return (lo + hi) / 2, 0
    return pts.mean(0), len(pts)


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def build_scene(seed: int = 0) -> DemoScene:
    """The four demo objects, slightly jittered/rotated by ``seed``.

    Objects sit at the corners of a square of half-diagonal ~0.65 around the
    origin (gaps of >= ~0.3 between them), each within a footprint radius of ~0.31.
    """
    rng = np.random.default_rng(seed)
    slot_angles = np.deg2rad([45.0, 135.0, 225.0, 315.0])
    ring = 0.65
    yaws = rng.uniform(0, 2 * np.pi, size=4)
    jitter = rng.uniform(-0.04, 0.04, size=(4, 2))

    def placer(i):
        rot = _rot_z(yaws[i])
        base = np.array(
            [ring * math.cos(slot_angles[i]) + jitter[i, 0], ring * math.sin(slot_angles[i]) + jitter[i, 1], 0.0]
        )
        return rot, (lambda p: rot @ np.asarray(p, dtype=np.float64) + base)

    objects: List[SceneObject] = []
    fid = iter(range(1, 100))

    # 1. Snowman: body + head spheres, top hat (brim + crown) as one part.
    rot, w = placer(0)
    up = rot[:, 2]
    objects.append(
        SceneObject(
            "snowman",
            1,
            [
                Part("snowman_body", next(fid), (225, 40, 40), [sphere(w([0, 0, 0.22]), 0.22)]),
                Part("snowman_head", next(fid), (250, 150, 20), [sphere(w([0, 0, 0.54]), 0.14)]),
                Part(
                    "snowman_hat",
                    next(fid),
                    (120, 40, 200),
                    [
                        cylinder(w([0, 0, 0.64]), w([0, 0, 0.665]), 0.14),
                        cylinder(w([0, 0, 0.64]), w([0, 0, 0.80]), 0.09),
                    ],
                ),
            ],
        )
    )

    # 2. Table: rotated top box, four legs as one part.
    rot, w = placer(1)
    legs = []
    for sx in (-1, 1):
        for sy in (-1, 1):
            legs.append(box(w([sx * 0.2, sy * 0.13, 0.19]), (0.03, 0.03, 0.19), rot))
    objects.append(
        SceneObject(
            "table",
            2,
            [
                Part("table_top", next(fid), (40, 90, 230), [box(w([0, 0, 0.405]), (0.25, 0.18, 0.025), rot)]),
                Part("table_legs", next(fid), (20, 190, 200), legs),
            ],
        )
    )

    # 3. Mushroom: stem cylinder + hemispherical cap.
    rot, w = placer(2)
    objects.append(
        SceneObject(
            "mushroom",
            3,
            [
                Part("mushroom_stem", next(fid), (240, 215, 40), [cylinder(w([0, 0, 0.0]), w([0, 0, 0.30]), 0.07)]),
                Part("mushroom_cap", next(fid), (215, 30, 160), [hemisphere(w([0, 0, 0.28]), 0.22, up)]),
            ],
        )
    )

    # 4. Lamp (floating a touch above z=0): base disc, capsule pole, cylindrical shade.
    rot, w = placer(3)
    objects.append(
        SceneObject(
            "lamp",
            4,
            [
                Part("lamp_base", next(fid), (30, 160, 60), [cylinder(w([0, 0, 0.02]), w([0, 0, 0.07]), 0.15)]),
                Part("lamp_pole", next(fid), (140, 85, 35), capsule(w([0, 0, 0.07]), w([0, 0, 0.50]), 0.035)),
                Part("lamp_shade", next(fid), (150, 225, 30), [cylinder(w([0, 0, 0.45]), w([0, 0, 0.66]), 0.14)]),
            ],
        )
    )
    return DemoScene(objects)


# ----------------------------------------------------------------------------
# Cameras and rendering
# ----------------------------------------------------------------------------


def intrinsics(resolution: int, fov_deg: float = FOV_DEG) -> Dict[str, float]:
    f = (resolution / 2.0) / math.tan(math.radians(fov_deg) / 2.0)
    return {"fl_x": f, "fl_y": f, "cx": resolution / 2.0, "cy": resolution / 2.0, "w": resolution, "h": resolution}


def look_at(eye: np.ndarray, target: np.ndarray, world_up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-world 4x4 in the OpenGL convention (looks down -Z, +Y up)."""
    fwd = _unit(np.asarray(target) - np.asarray(eye))
    right = _unit(np.cross(fwd, world_up))
    up = np.cross(right, fwd)
    c2w = np.eye(4)
    c2w[:3, 0] = right
    c2w[:3, 1] = up
    c2w[:3, 2] = -fwd
    c2w[:3, 3] = eye
    return c2w


def camera_poses(num_views: int, distance: float = CAMERA_DISTANCE) -> List[np.ndarray]:
    """``num_views`` cameras on two rings (elevations 20 and 45 deg) looking at the scene centre."""
    n_low = (num_views + 1) // 2
    n_high = num_views - n_low
    poses = []
    for elev, n, offset in ((RING_ELEVATIONS_DEG[0], n_low, 0.0), (RING_ELEVATIONS_DEG[1], n_high, 0.5)):
        e = math.radians(elev)
        for i in range(n):
            az = 2 * math.pi * (i + offset) / n
            eye = LOOK_AT + distance * np.array([math.cos(e) * math.cos(az), math.cos(e) * math.sin(az), math.sin(e)])
            poses.append(look_at(eye, LOOK_AT))
    return poses


def _pixel_rays(c2w: np.ndarray, K: Dict[str, float], uv: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """World ray origin (3,) and unit directions (N, 3) through continuous pixel coords ``uv`` (N, 2)."""
    x = (uv[:, 0] - K["cx"]) / K["fl_x"]
    y = -(uv[:, 1] - K["cy"]) / K["fl_y"]
    dirs_cam = np.stack([x, y, -np.ones_like(x)], axis=-1)
    dirs = dirs_cam @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return c2w[:3, 3].copy(), dirs


def _shade(scene_colors: np.ndarray, ids: np.ndarray, nrm: np.ndarray, d: np.ndarray) -> np.ndarray:
    # Make normals face the viewer (only matters for degenerate grazing hits).
    flip = np.einsum("ij,ij->i", nrm, d) > 0
    nrm = np.where(flip[:, None], -nrm, nrm)
    lam = np.clip(nrm @ LIGHT_DIR, 0.0, 1.0)
    shade = np.where(ids > 0, AMBIENT + DIFFUSE * lam, 1.0)
    return np.clip(scene_colors[ids] * shade[:, None], 0.0, 1.0)


def render_view(
    scene: DemoScene, c2w: np.ndarray, resolution: int, supersample: bool = True
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one view: (rgb uint8 HxWx3, coarse uint16 HxW, fine uint16 HxW).

    Masks are the exact ids of the closest hit of each pixel's centre ray; the RGB
    image averages a 2x2 grid of sub-pixel rays (when ``supersample``).
    """
    K = intrinsics(resolution)
    h = w = resolution
    vv, uu = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    centre = np.stack([uu.ravel() + 0.5, vv.ravel() + 0.5], axis=-1)
    offsets = [(0.0, 0.0)]
    if supersample:
        offsets += [(-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)]
    uv = np.concatenate([centre + np.asarray(o) for o in offsets], axis=0)
    o, d = _pixel_rays(c2w, K, uv)
    _t, ids, nrm = scene.cast(o, d)
    cols = _shade(scene.colors(), ids, nrm, d)
    n = h * w
    fine = ids[:n].reshape(h, w).astype(np.uint16)
    coarse = scene.part_to_object()[fine]
    if supersample:
        rgb = cols[n:].reshape(4, n, 3).mean(0)
    else:
        rgb = cols[:n]
    rgb8 = np.round(rgb.reshape(h, w, 3) * 255.0).astype(np.uint8)
    return rgb8, coarse, fine


def _sample_points(
    scene: DemoScene, poses: List[np.ndarray], resolution: int, rng: np.random.Generator, count: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Points on camera-visible surfaces (like an SfM cloud): random rays from random views."""
    K = intrinsics(resolution)
    colors = scene.colors()
    pts, rgbs = [], []
    total = 0
    for _ in range(100):
        if total >= count:
            break
        # One batch of random sub-pixel rays from randomly chosen views.
        m = 4 * count
        view = rng.integers(0, len(poses), size=m)
        uv = rng.uniform(0, resolution, size=(m, 2))
        x = (uv[:, 0] - K["cx"]) / K["fl_x"]
        y = -(uv[:, 1] - K["cy"]) / K["fl_y"]
        dirs_cam = np.stack([x, y, -np.ones_like(x)], axis=-1)
        rots = np.stack([c2w[:3, :3] for c2w in poses])[view]
        d = np.einsum("nij,nj->ni", rots, dirs_cam)
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        o = np.stack([c2w[:3, 3] for c2w in poses])[view]
        t, ids, nrm = scene.cast(o, d)
        hit = ids > 0
        pts.append(o[hit] + t[hit, None] * d[hit])
        rgbs.append(_shade(colors, ids[hit], nrm[hit], d[hit]))
        total += int(hit.sum())
    pts_all = np.concatenate(pts)[:count]
    rgb_all = np.concatenate(rgbs)[:count]
    pts_all = pts_all + rng.normal(0.0, POINT_NOISE_STD, size=pts_all.shape)
    return pts_all, np.round(rgb_all * 255.0).astype(np.uint8)


def write_ply(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> None:
    """Binary little-endian PLY with float x,y,z and uchar red,green,blue (what open3d reads)."""
    n = len(xyz)
    dtype = np.dtype(
        [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    )
    arr = np.empty(n, dtype=dtype)
    arr["x"], arr["y"], arr["z"] = xyz[:, 0], xyz[:, 1], xyz[:, 2]
    arr["red"], arr["green"], arr["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    header = (
        "ply\n"
        "format binary_little_endian 1.0\n"
        f"element vertex {n}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    with open(path, "wb") as f:
        f.write(header.encode("ascii"))
        f.write(arr.tobytes())


def _save_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(mask, dtype="<u2")).save(path)


def _round_list(v: np.ndarray, nd: int = 5) -> List[float]:
    return [round(float(x), nd) for x in v]


def write_demo_scene(output_dir: Path, num_views: int = 40, resolution: int = 96, seed: int = 0) -> Path:
    """Generate the demo scene in nerfstudio-data format under ``output_dir``; returns ``output_dir``.

    See the module docstring for the layout and conventions.  Deterministic for a
    given (num_views, resolution, seed).
    """
    if num_views < 1:
        raise ValueError("num_views must be >= 1")
    if resolution < 8:
        raise ValueError("resolution must be >= 8")
    output_dir = Path(output_dir)
    for sub in ("images", "coarse", "fine"):
        (output_dir / sub).mkdir(parents=True, exist_ok=True)

    scene = build_scene(seed)
    poses = camera_poses(num_views)
    K = intrinsics(resolution)

    frames = []
    for i, c2w in enumerate(poses):
        name = f"frame_{i + 1:05d}.png"
        rgb, coarse, fine = render_view(scene, c2w, resolution)
        Image.fromarray(rgb).save(output_dir / "images" / name)
        _save_mask(output_dir / "coarse" / name, coarse)
        _save_mask(output_dir / "fine" / name, fine)
        frames.append({"file_path": f"images/{name}", "transform_matrix": [_round_list(r, 8) for r in c2w]})

    rng = np.random.default_rng(seed + 12345)
    xyz, rgb = _sample_points(scene, poses, resolution, rng, NUM_SEED_POINTS)
    write_ply(output_dir / "sparse_pc.ply", xyz, rgb)

    transforms = {
        "camera_model": "OPENCV",
        **{k: (float(v) if k.startswith(("fl", "c")) else int(v)) for k, v in K.items()},
        "k1": 0.0,
        "k2": 0.0,
        "p1": 0.0,
        "p2": 0.0,
        "ply_file_path": "sparse_pc.ply",
        "frames": frames,
    }
    (output_dir / "transforms.json").write_text(json.dumps(transforms, indent=2))

    # Ground truth.
    centroids = {}
    objects_json = []
    step = 0.01
    for obj in scene.objects:
        parts_json = []
        obj_lo, obj_hi = np.full(3, np.inf), np.full(3, -np.inf)
        for part in obj.parts:
            lo, hi = scene._part_bounds(part)
            c, n_in = _grid_centroid(part.value, lo, hi, step)
            centroids[part.fine_id] = c
            obj_lo, obj_hi = np.minimum(obj_lo, lo), np.maximum(obj_hi, hi)
            parts_json.append(
                {
                    "name": part.name,
                    "fine_id": part.fine_id,
                    "color": list(part.color),
                    "center": _round_list(c),
                    "bbox_min": _round_list(lo),
                    "bbox_max": _round_list(hi),
                }
            )
        # Object centre: volume centroid of the union of its parts.
        obj_fn = lambda p, _o=obj: np.min(np.stack([pt.value(p) for pt in _o.parts]), axis=0)  # noqa: E731
        obj_c, _ = _grid_centroid(obj_fn, obj_lo, obj_hi, step)
        objects_json.append(
            {
                "name": obj.name,
                "coarse_id": obj.coarse_id,
                "center": _round_list(obj_c),
                "bbox_min": _round_list(obj_lo),
                "bbox_max": _round_list(obj_hi),
                "parts": parts_json,
            }
        )
    scene_json = {
        "description": "splatseg procedural demo scene (exact two-level instance masks)",
        "seed": seed,
        "num_views": num_views,
        "resolution": resolution,
        "world_up": [0.0, 0.0, 1.0],
        "camera_convention": "opengl (camera-to-world; camera looks down -Z, +Y up, +X right)",
        "background_color": list(BACKGROUND_COLOR),
        "light_dir": _round_list(LIGHT_DIR),
        "center_definition": "volume centroid of the solid (object = union of its parts)",
        "num_objects": len(scene.objects),
        "num_parts": len(scene.parts),
        "objects": objects_json,
    }
    (output_dir / "scene.json").write_text(json.dumps(scene_json, indent=2))
    return output_dir
