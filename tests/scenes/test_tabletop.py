"""The hard scene: what it promises (a floor touching every object, thin and small parts, an unmasked backdrop,
amodal masks, nerfstudio's held-out views) holds in what it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splatseg_ns.scenes.tabletop import build_tabletop, heldout_views, write_tabletop_scene


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_tabletop_scene(tmp_path_factory.mktemp("tabletop") / "scene", num_views=12, resolution=96)


def read(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)


def test_files_views_and_the_held_out_split(scene):
    meta = json.loads((scene / "scene.json").read_text())
    transforms = json.loads((scene / "transforms.json").read_text())
    assert len(transforms["frames"]) == 12 and (scene / "sparse_pc.ply").exists()
    # nerfstudio-data's default split: ceil(0.9 * 12) = 11 training views at int(linspace(0, 11, 11)), which
    # skips index 10: one view held out.
    assert meta["heldout_views"] == [f"frame_{i + 1:05d}.png" for i in heldout_views(12)] == ["frame_00011.png"]
    assert len(meta["train_views"]) == 11
    names = {o["name"] for o in meta["objects"]} | {p["name"] for o in meta["objects"] for p in o["parts"]}
    assert {"floor", "table", "mug_handle", "lamp_pole", "snowman_nose"} <= names
    assert {p.name for p in (scene / "amodal").iterdir()} == names


def test_objects_stand_on_the_floor_or_on_each_other_and_the_backdrop_has_no_mask(scene):
    meta = json.loads((scene / "scene.json").read_text())
    ids_of = {o["name"]: o["coarse_id"] for o in meta["objects"]}
    on = {}  # object -> what is seen right below it
    for path in sorted((scene / "coarse").glob("*.png")):
        ids = read(path).astype(np.int64)
        above, below = ids[:-1, :], ids[1:, :]
        for name, k in ids_of.items():
            on.setdefault(name, set()).update(below[(above == k) & (below != k) & (below > 0)].tolist())
        assert (ids == 0).any() and (ids == ids_of["floor"]).any()  # some backdrop, some floor in every view
        image = read(scene / "images" / path.name)
        assert image[ids == 0].std() > 1.0  # the backdrop is textured, not a flat background colour
    for name in ("table", "ball", "lamp", "books", "snowman"):
        assert ids_of["floor"] in on[name], name
    assert ids_of["table"] in on["mug"] and ids_of["table"] in on["ball"]  # the mug on the table, the ball at a leg


def test_thin_and_small_parts(scene):
    meta = json.loads((scene / "scene.json").read_text())
    fine = {p["name"]: p["fine_id"] for o in meta["objects"] for p in o["parts"]}
    widths, areas = [], {"mug_handle": [], "snowman_nose": []}
    for path in sorted((scene / "fine").glob("*.png")):
        ids = read(path)
        pole = ids == fine["lamp_pole"]
        rows = pole.sum(axis=1)
        widths += rows[rows > 0].tolist()
        for name in areas:
            areas[name].append(int((ids == fine[name]).sum()))
    assert 1 <= np.median(widths) <= 4  # a pole 1-4 px wide at 96 px (2-4 px at the default 128)
    assert 0 < max(areas["mug_handle"]) < 60 and 0 < max(areas["snowman_nose"]) < 60


def test_amodal_masks_hold_the_visible_ones_and_what_is_hidden(scene):
    meta = json.loads((scene / "scene.json").read_text())
    hidden = 0
    for obj in meta["objects"]:
        for path in sorted((scene / "coarse").glob("*.png")):
            visible = read(path) == obj["coarse_id"]
            amodal = read(scene / "amodal" / obj["name"] / path.name) > 127
            assert not (visible & ~amodal).any()  # what is seen of an object is part of its silhouette
            hidden += int((amodal & ~visible).sum())
    assert hidden > 0  # occlusions: the mug hides part of the table, the table part of the floor, ...


def test_same_seed_same_scene(scene, tmp_path):
    again = write_tabletop_scene(tmp_path / "again", num_views=12, resolution=96)
    for sub in ("images", "coarse", "fine"):
        for path in sorted((scene / sub).glob("*.png")):
            assert np.array_equal(read(path), read(again / sub / path.name)), path


def test_nearest_part_labels_points_in_on_and_near_parts_and_none_far_away():
    scene = build_tabletop(0)
    part = {p.name: p.fine_id for p in scene.parts}
    shade = next(p for p in scene.parts if p.name == "lamp_shade").solids[0]
    points = np.array([
        [-0.82, 0.32, 0.90],          # inside the lamp shade
        [-0.82, 0.32 + 0.165, 0.90],  # 5 mm outside the shade's side
        [-0.82, 0.32, 0.45],          # inside the pole
        [0.0, 0.0, 0.51],             # inside the table top (the table's jitter is 2 cm at most)
        [2.0, 2.0, 0.005],            # just above the floor, far from every object
        [2.0, 2.0, 1.5],              # in the air
    ])
    labels = scene.nearest_part(points, reach=0.02)
    assert labels.tolist() == [part["lamp_shade"], part["lamp_shade"], part["lamp_pole"], part["table_top"],
                               part["floor"], 0]
    assert shade.value(points[1:2])[0] > 0  # outside, yet within reach
    assert scene.nearest_part(points[1:2], reach=0.001).tolist() == [0]
