"""Analytic geometry for the procedural scenes: convex primitives, objects of parts, ray casting, cameras.

The scenes are built from primitives (boxes, capped cylinders, balls, half balls, capsules: each
a `Convex`, an intersection of slabs, balls and infinite cylinders), grouped into parts and
objects. Rays are cast analytically (`Scene.cast`), so every pixel's closest part is known
exactly: masks are exact ground truth, and an entity cast alone gives its amodal silhouette.

Conventions: world frame right-handed, +Z up; camera-to-world matrices in the nerfstudio / OpenGL
convention (the camera looks down its -Z axis, +X right, +Y up in the image); pixel (u, v) has its
centre at (u + 0.5, v + 0.5).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

_EPS = 1e-9


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
class Scene:
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

    def colors(self, background: Sequence[int] = (255, 255, 255)) -> np.ndarray:
        """Lookup table: fine id -> base RGB in [0, 1] (index 0 = background)."""
        lut = np.zeros((len(self.parts) + 1, 3))
        lut[0] = np.asarray(background) / 255.0
        for p in self.parts:
            lut[p.fine_id] = np.asarray(p.color) / 255.0
        return lut

    def value(self, p: np.ndarray) -> np.ndarray:
        """Implicit function of the whole scene: <= 0 inside, ~= distance near surfaces."""
        return np.min(np.stack([part.value(p) for part in self.parts]), axis=0)

    def nearest_part(self, p: np.ndarray, reach: float) -> np.ndarray:
        """[N] fine id of the part each point (N, 3) lies in or whose surface it is nearest to; 0 where no
        part is within `reach`: the labels the true geometry gives Gaussians centred at p."""
        values = np.stack([part.value(p) for part in self.parts], axis=1)
        ids = np.array([part.fine_id for part in self.parts])[values.argmin(axis=1)]
        return np.where(values.min(axis=1) <= reach, ids, 0)

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
            inside = np.linalg.norm(o - centre, axis=-1) < radius  # rays from inside the sphere: never culled
            idx = np.nonzero(np.isfinite(t_b) | inside)[0]
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
            lo = np.min([self.part_bounds(p)[0] for p in obj.parts], axis=0)
            hi = np.max([self.part_bounds(p)[1] for p in obj.parts], axis=0)
            cache[obj.coarse_id] = ((lo + hi) / 2, float(np.linalg.norm(hi - lo) / 2) + 1e-3)
        return cache[obj.coarse_id]

    def part_bounds(self, part: Part, margin: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
        """(lo, hi) world-axis box around the part, coarse (each solid bounded by its balls / slabs)."""
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


def grid_centroid(fn, lo: np.ndarray, hi: np.ndarray, step: float) -> Tuple[np.ndarray, int]:
    axes = [np.arange(lo[i] + step / 2, hi[i], step) for i in range(3)]
    g = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    inside = fn(g) <= 0
    pts = g[inside]
    if len(pts) == 0:
        return (lo + hi) / 2, 0
    return pts.mean(0), len(pts)


def rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def intrinsics(resolution: int, fov_deg: float = 45.0) -> Dict[str, float]:
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


def pixel_rays(c2w: np.ndarray, K: Dict[str, float], uv: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """World ray origin (3,) and unit directions (N, 3) through continuous pixel coords ``uv`` (N, 2)."""
    x = (uv[:, 0] - K["cx"]) / K["fl_x"]
    y = -(uv[:, 1] - K["cy"]) / K["fl_y"]
    dirs_cam = np.stack([x, y, -np.ones_like(x)], axis=-1)
    dirs = dirs_cam @ c2w[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    return c2w[:3, 3].copy(), dirs


def ring_poses(num_views: int, target: np.ndarray, distance: float,
               elevations_deg: Tuple[float, float]) -> List[np.ndarray]:
    """`num_views` cameras looking at `target` from two rings (the lower one holds the odd view; the upper
    one's azimuths sit halfway between the lower one's)."""
    n_low = (num_views + 1) // 2
    poses = []
    for elevation, count, offset in ((elevations_deg[0], n_low, 0.0), (elevations_deg[1], num_views - n_low, 0.5)):
        e = math.radians(elevation)
        for i in range(count):
            az = 2 * math.pi * (i + offset) / count
            eye = target + distance * np.array([math.cos(e) * math.cos(az), math.cos(e) * math.sin(az), math.sin(e)])
            poses.append(look_at(eye, target))
    return poses


def view_rays(c2w: np.ndarray, K: Dict[str, float], resolution: int,
              supersample: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Rays of a square view: every pixel centre (row-major), then, with `supersample`, four sub-pixel
    offsets of each (the image averages those; the masks take the centres)."""
    vv, uu = np.meshgrid(np.arange(resolution, dtype=np.float64), np.arange(resolution, dtype=np.float64),
                         indexing="ij")
    centre = np.stack([uu.ravel() + 0.5, vv.ravel() + 0.5], axis=-1)
    offsets = [(0.0, 0.0)] + ([(-0.25, -0.25), (0.25, -0.25), (-0.25, 0.25), (0.25, 0.25)] if supersample else [])
    return pixel_rays(c2w, K, np.concatenate([centre + np.asarray(off) for off in offsets], axis=0))


def frame_name(index: int) -> str:
    """The file name of view `index` (0-based) in every folder of a scene."""
    return f"frame_{index + 1:05d}.png"


def write_frames(output_dir: Path, poses: List[np.ndarray],
                 render: Callable[[np.ndarray], Tuple[np.ndarray, np.ndarray, np.ndarray]]) -> List[dict]:
    """Render every pose (`render(c2w)` -> rgb, coarse ids, fine ids) into images/, coarse/ and fine/;
    returns the transforms.json frames."""
    for sub in ("images", "coarse", "fine"):
        (output_dir / sub).mkdir(parents=True, exist_ok=True)
    frames = []
    for i, c2w in enumerate(poses):
        name = frame_name(i)
        rgb, coarse, fine = render(c2w)
        Image.fromarray(rgb).save(output_dir / "images" / name)
        save_mask(output_dir / "coarse" / name, coarse)
        save_mask(output_dir / "fine" / name, fine)
        frames.append({"file_path": f"images/{name}", "transform_matrix": [round_list(r, 8) for r in c2w]})
    return frames


def write_transforms(output_dir: Path, K: Dict[str, float], frames: List[dict]) -> None:
    """nerfstudio's transforms.json: one pinhole camera for every frame, the seed points in sparse_pc.ply."""
    transforms = {
        "camera_model": "OPENCV",
        **{k: (float(v) if k.startswith(("fl", "c")) else int(v)) for k, v in K.items()},
        "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
        "ply_file_path": "sparse_pc.ply",
        "frames": frames,
    }
    (output_dir / "transforms.json").write_text(json.dumps(transforms, indent=2))


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


def save_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(np.ascontiguousarray(mask, dtype="<u2")).save(path)


def round_list(v: np.ndarray, nd: int = 5) -> List[float]:
    return [round(float(x), nd) for x in v]


