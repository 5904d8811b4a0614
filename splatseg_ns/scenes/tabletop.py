"""The hard procedural scene: touching objects on a textured floor, before a backdrop no mask covers.

The demo scene is the easy case (small objects on white, nothing touching). This one has what
users' scenes have, with exact ground truth:

* a textured floor under and against every object (an entity of its own: users select it too);
* objects that touch or stand on each other: a mug on a table, a ball against a table leg, a
  book on a book, a lamp next to the table;
* similar colours across objects (a red mug and a red ball; two blue books; a snowman's body and
  head of one white);
* thin parts (table legs and a lamp pole 2-4 px wide at 128 px) and small ones (a mug's handle,
  a snowman's nose);
* a textured backdrop all around that carries no mask (id 0), so the reconstruction has
  background Gaussians and floaters that belong to no object;
* views on two rings at two heights; `heldout_views` are the views nerfstudio's default split
  (`nerfstudio-data`, train fraction 0.9) keeps out of training.

Written like the demo (`demo_scene`): images/, coarse/ and fine/ instance maps (16-bit, exact:
each pixel centre's closest part), transforms.json, sparse_pc.ply, scene.json, and `amodal/`:
per entity (object or part, by name) and view, its silhouette rendered alone, occluders and all
else removed: the mask an exported object should cover when a user opens it alone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from splatseg_ns.scenes.geometry import (
    Part,
    Scene,
    SceneObject,
    box,
    capsule,
    cylinder,
    frame_name,
    hemisphere,
    intrinsics,
    pixel_rays,
    ring_poses,
    rot_z,
    sphere,
    view_rays,
    write_frames,
    write_ply,
    write_transforms,
)

FOV_DEG = 50.0
CAMERA_DISTANCE = 2.7
RING_ELEVATIONS_DEG = (18.0, 40.0)
LOOK_AT = np.array([0.0, 0.0, 0.35])
BACKDROP_RADIUS = 7.0
LIGHT_DIR = np.array([0.35, -0.45, 1.0]) / np.linalg.norm([0.35, -0.45, 1.0])
AMBIENT, DIFFUSE = 0.45, 0.55
NUM_SEED_POINTS = 12000
POINT_NOISE_STD = 0.004
TRAIN_FRACTION = 0.9
"""nerfstudio-data's default train split fraction: the held-out views are the ones it leaves out."""


def _floor_texture(points: np.ndarray) -> np.ndarray:
    """Multiplier [N, 3]: 0.25 m tiles in two tones, each tile slightly tinted (deterministic)."""
    ix, iy = np.floor(points[:, 0] / 0.25).astype(np.int64), np.floor(points[:, 1] / 0.25).astype(np.int64)
    checker = ((ix + iy) % 2).astype(np.float64)
    tint = ((ix * 73856093) ^ (iy * 19349663)) % 97 / 97.0
    tone = 0.78 + 0.22 * checker + 0.08 * (tint - 0.5)
    return np.stack([tone, tone * 0.97, tone * 0.92], axis=-1)


def _wood_texture(points: np.ndarray) -> np.ndarray:
    """Multiplier [N, 3]: grain stripes along x."""
    grain = 0.9 + 0.1 * np.sin(points[:, 0] * 60.0 + 3.0 * np.sin(points[:, 1] * 9.0))
    return np.repeat(grain[:, None], 3, axis=1)


TEXTURES = {"floor": _floor_texture, "table_top": _wood_texture}
"""Part name -> texture (a colour multiplier of the surface point)."""


def build_tabletop(seed: int = 0) -> Scene:
    """The floor and six objects (seventeen ids in all: 7 coarse, 14 fine), jittered by `seed`."""
    rng = np.random.default_rng(seed)
    jitter = rng.uniform(-0.02, 0.02, size=2)
    yaw = rng.uniform(-0.15, 0.15)
    rot = rot_z(yaw)

    def w(p):  # the table group's placement
        return rot @ np.asarray(p, dtype=np.float64) + np.array([jitter[0], jitter[1], 0.0])

    ids = iter(range(1, 100))
    objects: List[SceneObject] = []

    def obj(name, coarse_id, parts):
        objects.append(SceneObject(name, coarse_id, [Part(n, next(ids), c, s) for n, c, s in parts]))

    obj("floor", 1, [("floor", (200, 190, 170), [box(np.array([0.0, 0.0, -0.05]), (3.0, 3.0, 0.05), np.eye(3))])])
    legs = [box(w([sx * 0.40, sy * 0.25, 0.2375]), (0.022, 0.022, 0.2375), rot) for sx in (-1, 1) for sy in (-1, 1)]
    obj("table", 2, [
        ("table_top", (150, 100, 60), [box(w([0.0, 0.0, 0.5]), (0.46, 0.31, 0.025), rot)]),
        ("table_legs", (120, 80, 50), legs),
    ])
    # A mug standing on the table top (touching it), its handle a small part.
    obj("mug", 3, [
        ("mug_body", (205, 45, 40), [cylinder(w([0.12, 0.05, 0.525]), w([0.12, 0.05, 0.685]), 0.075)]),
        ("mug_handle", (225, 215, 200), [box(w([0.215, 0.05, 0.605]), (0.022, 0.014, 0.045), rot)]),
    ])
    # A red ball on the floor, against a table leg: the same red as the mug.
    leg = w([0.40, 0.25, 0.0])
    obj("ball", 4, [("ball", (210, 50, 45), [sphere(leg + np.array([0.022 + 0.16, 0.0, 0.16]), 0.16)])])
    # A lamp beside the table: a thin pole between a base and a shade.
    lamp = np.array([-0.82, 0.32, 0.0])
    obj("lamp", 5, [
        ("lamp_base", (60, 60, 70), [cylinder(lamp, lamp + [0, 0, 0.04], 0.14)]),
        ("lamp_pole", (170, 170, 180), capsule(lamp + [0, 0, 0.04], lamp + [0, 0, 0.86], 0.022)),
        ("lamp_shade", (240, 220, 150), [cylinder(lamp + [0, 0, 0.80], lamp + [0, 0, 1.0], 0.16)]),
    ])
    # Two blue books, one on the other.
    book = np.array([0.05, -0.78, 0.0])
    obj("books", 6, [
        ("book_bottom", (40, 70, 160), [box(book + [0, 0, 0.04], (0.20, 0.14, 0.04), rot_z(0.2))]),
        ("book_top", (55, 85, 175), [box(book + [0.02, 0.01, 0.115], (0.16, 0.11, 0.035), rot_z(-0.25))]),
    ])
    # A snowman: body and head of one white, a small orange nose.
    snow = np.array([0.85, -0.55, 0.0])
    head = snow + [0, 0, 0.50]
    obj("snowman", 7, [
        ("snowman_body", (235, 235, 232), [sphere(snow + [0, 0, 0.21], 0.21)]),
        ("snowman_head", (235, 235, 232), [sphere(head, 0.13)]),
        ("snowman_nose", (245, 130, 30), [hemisphere(head + [-0.12, 0.06, 0.0], 0.035, np.array([-1.0, 0.5, 0.0]))]),
    ])
    return Scene(objects)


def _backdrop(o: np.ndarray, d: np.ndarray, t_max: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Where rays o + t d leave the inside of the backdrop cylinder, and its colour there [N, 3].

    Hits farther than `t_max` (behind scene geometry) are inf."""
    o2 = np.broadcast_to(o, d.shape)
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = o2[:, 0] * d[:, 0] + o2[:, 1] * d[:, 1]
    c = o2[:, 0] ** 2 + o2[:, 1] ** 2 - BACKDROP_RADIUS**2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (-b + np.sqrt(np.maximum(b * b - a * c, 0.0))) / a
    t = np.where((a > 1e-12) & (t > 0) & (t < t_max), t, np.inf)
    p = o2 + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    angle, height = np.arctan2(p[:, 1], p[:, 0]), np.clip(p[:, 2] / 5.0, 0.0, 1.0)
    horizon, zenith = np.array([0.72, 0.80, 0.88]), np.array([0.35, 0.50, 0.75])
    colour = horizon + (zenith - horizon) * height[:, None]
    colour = colour * (1.0 + 0.10 * np.sin(5.0 * angle) * np.cos(3.0 * height * np.pi))[:, None]
    return t, np.clip(colour, 0.0, 1.0)


def _shade(scene: Scene, fine: np.ndarray, points: np.ndarray, nrm: np.ndarray, d: np.ndarray) -> np.ndarray:
    colours = scene.colors()[fine]
    for part in scene.parts:
        texture = TEXTURES.get(part.name)
        hit = fine == part.fine_id
        if texture is not None and hit.any():
            colours[hit] = colours[hit] * texture(points[hit])
    flip = np.einsum("ij,ij->i", nrm, d) > 0
    nrm = np.where(flip[:, None], -nrm, nrm)
    light = AMBIENT + DIFFUSE * np.clip(nrm @ LIGHT_DIR, 0.0, 1.0)
    return np.clip(colours * light[:, None], 0.0, 1.0)


def _cast(scene: Scene, o: np.ndarray, d: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(fine ids, colours [N, 3]) of rays: the closest part, else the backdrop (id 0)."""
    t, fine, nrm = scene.cast(o, d)
    points = o + np.where(np.isfinite(t), t, 0.0)[:, None] * d
    colours = _shade(scene, fine, points, nrm, d)
    t_back, backdrop = _backdrop(o, d, t)
    on_backdrop = (fine == 0) & np.isfinite(t_back)
    colours[on_backdrop] = backdrop[on_backdrop]
    colours[(fine == 0) & ~on_backdrop] = 0.0  # rays that leave through the backdrop's open ends
    return fine, colours


def render_view(scene: Scene, c2w: np.ndarray, resolution: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rgb uint8 [H, W, 3], coarse uint16 [H, W], fine uint16 [H, W]) of one view.

    Masks are the exact ids at each pixel centre (the backdrop is 0); the image averages the centre
    and four sub-pixel rays."""
    K = intrinsics(resolution, FOV_DEG)
    o, d = view_rays(c2w, K, resolution, supersample=True)
    fine, colours = _cast(scene, o, d)
    n = resolution * resolution
    fine_map = fine[:n].reshape(resolution, resolution).astype(np.uint16)
    rgb = colours[n:].reshape(4, n, 3).mean(0).reshape(resolution, resolution, 3)
    return np.round(rgb * 255.0).astype(np.uint8), scene.part_to_object()[fine_map], fine_map


def render_amodal(scene: Scene, c2w: np.ndarray, resolution: int) -> Dict[str, np.ndarray]:
    """Entity name -> bool [H, W]: the silhouette of every object and part rendered alone."""
    K = intrinsics(resolution, FOV_DEG)
    o, d = view_rays(c2w, K, resolution, supersample=False)
    out = {}
    for obj in scene.objects:
        entities = [(obj.name, obj.parts)] + ([(p.name, [p]) for p in obj.parts] if len(obj.parts) > 1 else [])
        for name, parts in entities:
            _, fine, _ = Scene([SceneObject(name, obj.coarse_id, parts)]).cast(o, d)
            out[name] = (fine > 0).reshape(resolution, resolution)
    return out


def camera_poses(num_views: int) -> List[np.ndarray]:
    """`num_views` cameras on two rings (18 and 40 degrees up), looking at the middle of the table."""
    return ring_poses(num_views, LOOK_AT, CAMERA_DISTANCE, RING_ELEVATIONS_DEG)


def heldout_views(num_views: int, train_fraction: float = TRAIN_FRACTION) -> List[int]:
    """The view indices nerfstudio's fraction split holds out: what `linspace` over the views skips
    (nerfstudio.data.utils.dataparsers_utils.get_train_eval_split_fraction)."""
    train = set(np.linspace(0, num_views - 1, math.ceil(num_views * train_fraction), dtype=int).tolist())
    return [i for i in range(num_views) if i not in train]


def _seed_points(scene: Scene, poses: List[np.ndarray], resolution: int, rng: np.random.Generator, count: int):
    """Points on camera-visible surfaces, the backdrop's included (like an SfM cloud)."""
    K = intrinsics(resolution, FOV_DEG)
    points, colours = [], []
    for _ in range(20):
        if sum(len(p) for p in points) >= count:
            break
        view = rng.integers(0, len(poses))
        uv = rng.uniform(0, resolution, size=(count, 2))
        o, d = pixel_rays(poses[view], K, uv)
        t, fine, _ = scene.cast(o, d)
        t_back, _ = _backdrop(o, d, t)
        t_hit = np.where(fine > 0, t, t_back)
        hit = np.isfinite(t_hit)
        _, rgb = _cast(scene, o, d[hit]) if hit.any() else (None, np.zeros((0, 3)))
        points.append(o + t_hit[hit, None] * d[hit])
        colours.append(rgb)
    xyz = np.concatenate(points)[:count]
    xyz = xyz + rng.normal(0.0, POINT_NOISE_STD, size=xyz.shape)
    return xyz, np.round(np.concatenate(colours)[:count] * 255.0).astype(np.uint8)


def write_tabletop_scene(output_dir: Path, num_views: int = 48, resolution: int = 128, seed: int = 0) -> Path:
    """Write the tabletop scene in nerfstudio-data format under `output_dir` (see the module docstring)."""
    if num_views < 1:
        raise ValueError("num_views must be >= 1")
    if resolution < 8:
        raise ValueError("resolution must be >= 8")
    output_dir = Path(output_dir)
    scene = build_tabletop(seed)
    poses = camera_poses(num_views)
    frames = write_frames(output_dir, poses, lambda c2w: render_view(scene, c2w, resolution))
    for i, c2w in enumerate(poses):
        for entity, mask in render_amodal(scene, c2w, resolution).items():
            (output_dir / "amodal" / entity).mkdir(parents=True, exist_ok=True)
            Image.fromarray((mask * 255).astype(np.uint8)).save(output_dir / "amodal" / entity / frame_name(i))
    xyz, rgb = _seed_points(scene, poses, resolution, np.random.default_rng(seed + 12345), NUM_SEED_POINTS)
    write_ply(output_dir / "sparse_pc.ply", xyz, rgb)
    write_transforms(output_dir, intrinsics(resolution, FOV_DEG), frames)
    heldout = heldout_views(num_views)
    scene_json = {
        "description": "splatseg tabletop scene: touching objects on a textured floor before an unmasked backdrop",
        "seed": seed, "num_views": num_views, "resolution": resolution,
        "heldout_views": [frame_name(i) for i in heldout],
        "train_views": [frame_name(i) for i in range(num_views) if i not in heldout],
        "amodal": "amodal/<entity name>/<view>.png: the entity's silhouette rendered alone",
        "objects": [{"name": o.name, "coarse_id": o.coarse_id,
                     "parts": [{"name": p.name, "fine_id": p.fine_id} for p in o.parts]} for o in scene.objects],
    }
    (output_dir / "scene.json").write_text(json.dumps(scene_json, indent=2))
    return output_dir
