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
from pathlib import Path
from typing import List, Tuple

import numpy as np

from splatseg_ns.scenes.geometry import (
    Part,
    Scene,
    SceneObject,
    box,
    capsule,
    cylinder,
    grid_centroid,
    hemisphere,
    intrinsics,
    ring_poses,
    rot_z,
    round_list,
    sphere,
    view_rays,
    write_frames,
    write_ply,
    write_transforms,
)

__all__ = [
    "write_demo_scene",
    "build_scene",
    "camera_poses",
    "intrinsics",
    "render_view",
    "Scene",
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



def build_scene(seed: int = 0) -> Scene:
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
        rot = rot_z(yaws[i])
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
    return Scene(objects)


# ----------------------------------------------------------------------------
# Cameras and rendering
# ----------------------------------------------------------------------------


def camera_poses(num_views: int) -> List[np.ndarray]:
    """``num_views`` cameras on two rings (elevations 20 and 45 deg) looking at the scene centre."""
    return ring_poses(num_views, LOOK_AT, CAMERA_DISTANCE, RING_ELEVATIONS_DEG)


def _shade(scene_colors: np.ndarray, ids: np.ndarray, nrm: np.ndarray, d: np.ndarray) -> np.ndarray:
    # Make normals face the viewer (only matters for degenerate grazing hits).
    flip = np.einsum("ij,ij->i", nrm, d) > 0
    nrm = np.where(flip[:, None], -nrm, nrm)
    lam = np.clip(nrm @ LIGHT_DIR, 0.0, 1.0)
    shade = np.where(ids > 0, AMBIENT + DIFFUSE * lam, 1.0)
    return np.clip(scene_colors[ids] * shade[:, None], 0.0, 1.0)


def render_view(
    scene: Scene, c2w: np.ndarray, resolution: int, supersample: bool = True
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one view: (rgb uint8 HxWx3, coarse uint16 HxW, fine uint16 HxW).

    Masks are the exact ids of the closest hit of each pixel's centre ray; the RGB
    image averages a 2x2 grid of sub-pixel rays (when ``supersample``).
    """
    o, d = view_rays(c2w, intrinsics(resolution, FOV_DEG), resolution, supersample)
    h = w = resolution
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
    scene: Scene, poses: List[np.ndarray], resolution: int, rng: np.random.Generator, count: int
) -> Tuple[np.ndarray, np.ndarray]:
    """Points on camera-visible surfaces (like an SfM cloud): random rays from random views."""
    K = intrinsics(resolution, FOV_DEG)
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
    scene = build_scene(seed)
    poses = camera_poses(num_views)
    frames = write_frames(output_dir, poses, lambda c2w: render_view(scene, c2w, resolution))
    rng = np.random.default_rng(seed + 12345)
    xyz, rgb = _sample_points(scene, poses, resolution, rng, NUM_SEED_POINTS)
    write_ply(output_dir / "sparse_pc.ply", xyz, rgb)
    write_transforms(output_dir, intrinsics(resolution, FOV_DEG), frames)

    # Ground truth.
    centroids = {}
    objects_json = []
    step = 0.01
    for obj in scene.objects:
        parts_json = []
        obj_lo, obj_hi = np.full(3, np.inf), np.full(3, -np.inf)
        for part in obj.parts:
            lo, hi = scene.part_bounds(part)
            c, n_in = grid_centroid(part.value, lo, hi, step)
            centroids[part.fine_id] = c
            obj_lo, obj_hi = np.minimum(obj_lo, lo), np.maximum(obj_hi, hi)
            parts_json.append(
                {
                    "name": part.name,
                    "fine_id": part.fine_id,
                    "color": list(part.color),
                    "center": round_list(c),
                    "bbox_min": round_list(lo),
                    "bbox_max": round_list(hi),
                }
            )
        # Object centre: volume centroid of the union of its parts.
        obj_fn = lambda p, _o=obj: np.min(np.stack([pt.value(p) for pt in _o.parts]), axis=0)  # noqa: E731
        obj_c, _ = grid_centroid(obj_fn, obj_lo, obj_hi, step)
        objects_json.append(
            {
                "name": obj.name,
                "coarse_id": obj.coarse_id,
                "center": round_list(obj_c),
                "bbox_min": round_list(obj_lo),
                "bbox_max": round_list(obj_hi),
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
        "light_dir": round_list(LIGHT_DIR),
        "center_definition": "volume centroid of the solid (object = union of its parts)",
        "num_objects": len(scene.objects),
        "num_parts": len(scene.parts),
        "objects": objects_json,
    }
    (output_dir / "scene.json").write_text(json.dumps(scene_json, indent=2))
    return output_dir
