"""Hostile and unlucky input, second round: every case ends in exit status non-zero, one line naming the file or
option, no traceback, and nothing in the whole working folder changed (every file hashed before and after,
with a decoy file beside each output). Then the unit-level halves: what the commands now do right."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from pathlib import Path
from typing import Dict

import numpy as np
import pytest
from PIL import Image

from tests.helpers import VIEW, FakeMasks, write_images
from tests.test_cli import run_cli

DEEP = "[" * 100_000 + "]" * 100_000


def tree_hashes(root: Path) -> Dict[str, str]:
    """sha1 of every file under `root` (links by their target, pipes by their kind)."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            found[str(path)] = "link:" + os.readlink(path)
        elif path.is_file():
            found[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
        else:
            found[str(path)] = "dir" if path.is_dir() else "other"
    return found


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A tiny PNG whose header claims width x height (PIL refuses it as a decompression bomb on opening)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) +
                     chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def world(trained_demo_run: Path, demo_scene: Path, tmp_path_factory) -> Dict:
    root = tmp_path_factory.mktemp("hostile")
    code, said = run_cli(["make-benchmark", "--data", str(demo_scene), "--output", str(root / "bench"),
                          "--prompt-view", VIEW, "--score-views", "frame_00006"])
    assert code == 0, said
    good = root / "good.json"
    code, said = run_cli(["select", "--load-config", str(trained_demo_run), "--view", VIEW, "--click", "32", "32",
                          "--output", str(good)])
    if code != 0:  # the centre of the view may be background: any object's deepest pixel will do
        from splatseg_ns.tools.make_benchmark import deepest_pixel, object_masks

        largest = max(object_masks(demo_scene, demo_scene / "images" / VIEW, "coarse").values(), key=lambda m: m.sum())
        code, said = run_cli(["select", "--load-config", str(trained_demo_run), "--view", VIEW, "--click",
                              *map(str, deepest_pixel(largest)), "--output", str(good)])
    assert code == 0, said
    for name, objects in (("traversal", "../../../escaped"), ("absolute", str(root / "absolute_escape"))):
        scene = root / f"scene_{name}"
        shutil.copytree(demo_scene, scene, ignore=shutil.ignore_patterns("splatseg_cache"))
        record = json.loads((scene / "scene.json").read_text())
        record["objects"][0]["name"] = objects
        (scene / "scene.json").write_text(json.dumps(record))
    deep_scene = root / "scene_deep"
    shutil.copytree(demo_scene, deep_scene, ignore=shutil.ignore_patterns("splatseg_cache"))
    (deep_scene / "scene.json").write_text(DEEP)
    payload = root / "payload_ran"
    (root / "evil.yml").write_text(f"!!python/object/apply:os.system ['touch {payload}']\n")
    (root / "evil_inner.yml").write_text(f"pipeline: !!python/object/apply:subprocess.call [['touch', '{payload}']]\n")
    (root / "deep.json").write_text(DEEP)
    (root / "deep_bench").mkdir()
    (root / "deep_bench" / "prompts.json").write_text(DEEP)
    bomb_png(root / "bomb_masks" / VIEW)
    shutil.copytree(root / "bench", root / "bomb_bench")
    for gt in (root / "bomb_bench" / "gt").rglob("*.png"):
        bomb_png(gt)
    (root / "twice").mkdir()
    from splatseg_ns.tools.make_benchmark import object_masks

    largest = max(object_masks(demo_scene, demo_scene / "images" / VIEW, "coarse").values(), key=lambda m: m.sum())
    mask = largest.astype(np.uint8) * 255
    Image.fromarray(mask).save(root / "twice" / VIEW)
    Image.fromarray(mask).save(root / "twice" / VIEW.replace(".png", ".jpg"))
    dataset = root / "someones_dataset"
    write_images(dataset, n=2)
    (dataset / "transforms.json").write_text('{"frames": []}')
    (root / "decoy.txt").write_text("beside every output")
    os.symlink(root / "decoy.txt", root / "link.json")
    os.mkfifo(root / "pipe.json")
    return {"config": trained_demo_run, "data": demo_scene, "root": root, "payload": payload, "good": good}


def select(w, *extra):
    return ["select", "--load-config", w["config"], "--view", VIEW, "--click", "1", "1", *extra]


CASES = [
    # security
    ("make-benchmark: a name that climbs out", lambda w: ["make-benchmark", "--data", w["root"] / "scene_traversal",
                                                           "--output", w["root"] / "b1", "--prompt-view", VIEW,
                                                           "--score-views", VIEW],
     ["scene.json", "'../../../escaped' cannot be a file or folder name"]),
    ("make-benchmark: an absolute name", lambda w: ["make-benchmark", "--data", w["root"] / "scene_absolute",
                                                     "--output", w["root"] / "b2", "--prompt-view", VIEW,
                                                     "--score-views", VIEW],
     ["scene.json", "cannot be a file or folder name"]),
    ("select: a config that runs a command", lambda w: ["select", "--load-config", w["root"] / "evil.yml", "--view", VIEW,
                                                         "--click", "1", "1", "--output", w["root"] / "o.json"],
     ["evil.yml", "refused tag naming 'os.system'", "Nothing in it was run"]),
    ("export: a config that runs a command inside", lambda w: ["export", "--load-config", w["root"] / "evil_inner.yml",
                                                                "--selection", w["good"], "--output", w["root"] / "o.ply"],
     ["evil_inner.yml", "refused tag naming 'subprocess.call'"]),
    # data loss
    ("demo-data over someone's dataset", lambda w: ["demo-data", w["root"] / "someones_dataset", "--num-views", "2",
                                                     "--resolution", "16"],
     ["someones_dataset", "not empty and was not written by this command", "--overwrite"]),
    ("select output through a link", lambda w: select(w, "--output", w["root"] / "link.json"),
     ["--output", "link.json", "symbolic link"]),
    ("select output into a pipe", lambda w: select(w, "--output", w["root"] / "pipe.json"),
     ["--output", "pipe.json", "not a regular file"]),
    ("export output to a device", lambda w: ["export", "--load-config", w["config"], "--selection", w["good"],
                                             "--output", "/dev/null"], ["--output /dev/null", "not a regular file"]),
    # tracebacks
    ("select --masks: a decompression bomb", lambda w: ["select", "--load-config", w["config"], "--masks",
                                                        w["root"] / "bomb_masks", "--output", w["root"] / "o.json"],
     ["bomb_masks", VIEW, "cannot read the mask"]),
    ("eval: gt masks that are bombs", lambda w: ["eval", "--load-config", w["config"], "--benchmark",
                                                 w["root"] / "bomb_bench", "--output", w["root"] / "m.json"],
     ["bomb_bench", "cannot read the mask"]),
    ("export: a selection nested 100,000 deep", lambda w: ["export", "--load-config", w["config"], "--selection",
                                                          w["root"] / "deep.json", "--output", w["root"] / "o.ply"],
     ["deep.json", "nested too deeply"]),
    ("eval: prompts nested 100,000 deep", lambda w: ["eval", "--load-config", w["config"], "--benchmark",
                                                     w["root"] / "deep_bench", "--output", w["root"] / "m.json"],
     ["prompts.json", "nested too deeply"]),
    ("make-benchmark: scene.json nested 100,000 deep", lambda w: ["make-benchmark", "--data", w["root"] / "scene_deep",
                                                                  "--output", w["root"] / "b3", "--prompt-view", VIEW,
                                                                  "--score-views", VIEW],
     ["scene.json", "nested too deeply"]),
    ("masks: a superscript shard", lambda w: ["masks", "--data", w["data"], "--shard", "\u00b2/3"], ["--shard"]),
    ("masks: a superscript count", lambda w: ["masks", "--data", w["data"], "--shard", "0/\u00b3"], ["--shard"]),
    ("masks: no points per side", lambda w: ["masks", "--data", w["data"], "--sam.points-per-side", "0"],
     ["--sam.points-per-side 0: must be at least 1"]),
    ("masks: negative points per side", lambda w: ["masks", "--data", w["data"], "--sam.points-per-side", "-2"],
     ["--sam.points-per-side -2"]),
    ("masks: no points per batch", lambda w: ["masks", "--data", w["data"], "--sam.points-per-batch", "0"],
     ["--sam.points-per-batch 0"]),
    ("masks: negative crop layers", lambda w: ["masks", "--data", w["data"], "--sam.crop-n-layers", "-1"],
     ["--sam.crop-n-layers -1"]),
    ("masks: a negative longest side", lambda w: ["masks", "--data", w["data"], "--sam.max-side", "-5"],
     ["--sam.max-side -5"]),
    ("masks: a one-pixel longest side", lambda w: ["masks", "--data", w["data"], "--sam.max-side", "1"],
     ["--sam.max-side 1"]),
    ("masks: an IoU threshold above 1", lambda w: ["masks", "--data", w["data"], "--sam.pred-iou-thresh", "5"],
     ["--sam.pred-iou-thresh 5.0: must be in [0, 1]"]),
    ("demo-data: a negative seed", lambda w: ["demo-data", w["root"] / "new_scene", "--seed", "-1"], ["--seed -1"]),
    ("demo-data: a resolution beyond memory", lambda w: ["demo-data", w["root"] / "new_scene", "--resolution", "100000"],
     ["--resolution 100000", "GiB of memory"]),
    ("bench: sizes beyond memory", lambda w: ["bench", "--sizes", "10000000000"], ["--sizes 10000000000", "GiB"]),
    # silently wrong before
    ("select --masks: two masks of one view", lambda w: ["select", "--load-config", w["config"], "--masks",
                                                         w["root"] / "twice", "--output", w["root"] / "o.json"],
     ["twice", "are both masks of view"]),
    ("select --masks with --threshold", lambda w: ["select", "--load-config", w["config"], "--masks", w["root"] / "twice",
                                                   "--threshold", "0.5", "--output", w["root"] / "o.json"],
     ["--masks takes no --threshold"]),
    ("select --masks with --level and --view", lambda w: ["select", "--load-config", w["config"], "--masks",
                                                          w["root"] / "twice", "--level", "fine", "--view", VIEW,
                                                          "--output", w["root"] / "o.json"],
     ["--masks takes no --view, --level"]),
]


@pytest.mark.parametrize("name,arguments,words", CASES, ids=[c[0] for c in CASES])
def test_refused_with_one_line_and_nothing_changed(world, name, arguments, words):
    before = tree_hashes(world["root"])
    data_before = tree_hashes(world["data"])
    code, said = run_cli([str(a) for a in arguments(world)])
    assert code == 1, said
    assert "Traceback" not in said
    assert any(line.startswith("error: ") for line in said.splitlines()), said
    for word in words:
        assert word in said, f"{word!r} not in {said!r}"
    assert tree_hashes(world["root"]) == before
    assert tree_hashes(world["data"]) == data_before
    assert not world["payload"].exists()  # no config's payload ran
    assert not (world["root"].parent / "escaped").exists() and not (world["root"] / "absolute_escape").exists()
    assert not (world["root"] / "new_scene").exists()  # refused before any folder was made


def test_ctrl_c_ends_in_one_line_and_status_130(world, monkeypatch):
    import splatseg_ns.tools.export as export_tool

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_tool, "export_selection", interrupted)
    code, said = run_cli(["export", "--load-config", str(world["config"]), "--selection", str(world["good"]),
                          "--output", str(world["root"] / "interrupted.ply")])
    assert code == 130 and "interrupted; files are written atomically" in said and "Traceback" not in said
    assert not (world["root"] / "interrupted.ply").exists()


def test_a_misnamed_mask_is_said_on_the_terminal(world, tmp_path):
    folder = tmp_path / "masks"
    shutil.copytree(world["root"] / "twice", folder)
    (folder / VIEW.replace(".png", ".jpg")).rename(folder / "frame_0005.png")  # no such view
    code, said = run_cli(["select", "--load-config", str(world["config"]), "--masks", str(folder), "--output",
                          str(tmp_path / "sel.json")])
    assert code == 0, said
    assert "note: 1 mask(s)" in said and "frame_0005.png" in said and "ignored" in said
    assert json.loads((tmp_path / "sel.json").read_text())["prompts"]["ignored"] == ["frame_0005.png"]


def test_rgba_masks_use_their_alpha(world, tmp_path):
    """A cut-out saved as RGBA (constant colour, the object in alpha) selects what the grey mask selects."""
    grey, rgba = tmp_path / "grey", tmp_path / "rgba"
    grey.mkdir(), rgba.mkdir()
    mask = np.array(Image.open(world["root"] / "twice" / VIEW))
    Image.fromarray(mask).save(grey / VIEW)
    cut_out = np.zeros((*mask.shape, 4), np.uint8)
    cut_out[..., 3] = mask
    Image.fromarray(cut_out, "RGBA").save(rgba / VIEW)
    results = []
    for folder in (grey, rgba):
        code, said = run_cli(["select", "--load-config", str(world["config"]), "--masks", str(folder), "--output",
                              str(folder / "sel.json")])
        assert code == 0, said
        results.append(json.loads((folder / "sel.json").read_text())["indices"])
    assert results[0] == results[1] and results[0]


def test_demo_data_may_rewrite_its_own_scene_and_overwrite_on_request(tmp_path):
    out = tmp_path / "scene"
    assert run_cli(["demo-data", str(out), "--num-views", "2", "--resolution", "16"])[0] == 0
    assert run_cli(["demo-data", str(out), "--num-views", "2", "--resolution", "16", "--seed", "1"])[0] == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("x")
    assert run_cli(["demo-data", str(other), "--num-views", "2", "--resolution", "16", "--overwrite"])[0] == 0
    assert (other / "mine.txt").read_text() == "x" and (other / "transforms.json").exists()


def test_demo_data_writes_noisy_masks_on_request(tmp_path):
    from PIL import Image

    exact, strong = tmp_path / "exact", tmp_path / "strong"
    for out, noise in ((exact, "none"), (strong, "strong")):
        code, said = run_cli(["demo-data", str(out), "--scene", "tabletop", "--num-views", "3", "--resolution", "32",
                              "--mask-noise", noise])
        assert code == 0, said
    assert "strong mask noise" in said and json.loads((strong / "scene.json").read_text())["mask_noise"] == "strong"
    views = sorted(p.name for p in (exact / "fine").glob("*.png"))
    differ = [not np.array_equal(np.array(Image.open(exact / "fine" / v)), np.array(Image.open(strong / "fine" / v)))
              for v in views]
    assert any(differ)
    for folder in ("images", "amodal/mug"):  # only the instance masks change
        for v in views:
            assert (exact / folder / v).read_bytes() == (strong / folder / v).read_bytes()


def test_replacing_a_file_keeps_its_mode(tmp_path):
    from splatseg_ns.core.files import atomic_write

    path = tmp_path / "out.json"
    path.write_text("old")
    os.chmod(path, 0o600)
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------------------------------- the cache


def test_a_damaged_dataset_record_or_manifest_is_recomputed_not_a_traceback(tmp_path):
    from splatseg_ns.core.extract.extraction import extract_all

    root = tmp_path / "scene"
    images = write_images(root, n=3)
    cache_dir = root / "splatseg_cache"
    extract_all(images, [FakeMasks().extractor()], cache_dir, progress=False)
    for record in ('{"images": [1, 2]}', '{"images": "abc"}', '{"images": {}, "data_dir": 5}', DEEP):
        (cache_dir / "dataset.json").write_text(record)
        summary = extract_all(images, [FakeMasks().extractor()], cache_dir, progress=False)
        assert summary.counts == {"masks": {"hit": 3}}, record[:30]
        assert isinstance(json.loads((cache_dir / "dataset.json").read_text())["images"], dict)
    manifest = next(cache_dir.rglob("*.png.json"))
    manifest.write_text(DEEP)
    summary = extract_all(images, [FakeMasks().extractor()], cache_dir, progress=False)
    assert summary.counts == {"masks": {"hit": 2, "missing": 1}}


def test_stale_temporaries_are_removed_and_a_folder_in_an_entrys_place_is_named(tmp_path):
    from splatseg_ns.core.extract.cache import CacheError
    from splatseg_ns.core.extract.extraction import extract_all

    root = tmp_path / "scene"
    images = write_images(root, n=2)
    cache_dir = root / "splatseg_cache"
    extract_all(images[:1], [FakeMasks().extractor()], cache_dir, progress=False)
    old, fresh = cache_dir / "masks" / ".x.npz.1234abcd.tmp", cache_dir / "masks" / ".y.npz.5678abcd.tmp"
    old.write_bytes(b"left by a killed write")
    fresh.write_bytes(b"another process is writing it now")
    os.utime(old, (0, 0))
    in_the_way = cache_dir / "masks" / "images" / f"{images[1].name}.json"
    in_the_way.mkdir(parents=True)
    with pytest.raises(CacheError, match=rf"{in_the_way} is a folder where a cache entry of .* belongs; remove it"):
        extract_all(images, [FakeMasks().extractor()], cache_dir, progress=False)
    assert not old.exists() and fresh.exists()


def test_a_looping_link_is_listed_with_the_bad_files_and_the_rest_stored(tmp_path):
    from splatseg_ns.core.extract.cache import FeatureCache
    from splatseg_ns.core.extract.extraction import extract_all
    from splatseg_ns.core.io.images import InputFilesError

    root = tmp_path / "scene"
    images = write_images(root, n=3)
    loop = root / "images" / "q.png"
    os.symlink(loop, loop)
    with pytest.raises(InputFilesError, match=r"q.png: not a readable file \(a broken or looping symbolic link"):
        extract_all([*images, loop], [FakeMasks().extractor()], root / "splatseg_cache", progress=False)
    assert all(FeatureCache(root).lookup("masks", p).hit for p in images)


def test_two_linked_images_of_one_name_are_two_entries(tmp_path):
    from splatseg_ns.core.extract.cache import FeatureCache

    root = tmp_path / "scene"
    (elsewhere,) = write_images(tmp_path / "elsewhere", n=1)
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
        os.symlink(elsewhere, root / folder / "same.png")
    cache = FeatureCache(root)
    assert cache.key(root / "a" / "same.png") == "a/same.png" and cache.key(root / "b" / "same.png") == "b/same.png"


def test_16_bit_grey_images_are_scaled_not_clipped(tmp_path):
    from splatseg_ns.core.io.images import ImageReadError, load_image

    values = np.linspace(0, 65535, 64).astype(np.uint16).reshape(8, 8)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = load_image(path)
    assert rgb.shape == (8, 8, 3) and rgb.min() == 0 and rgb.max() == 255
    np.testing.assert_allclose(rgb[..., 0].astype(float), values / 257.0, atol=1)
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(ImageReadError, match="floating-point image"):
        load_image(tmp_path / "float.tif")


def test_sam_settings_are_range_checked_for_ns_train_too():
    from splatseg_ns.core.extract.sam_masks import SamMaskConfig

    assert SamMaskConfig().problems() == []
    bad = SamMaskConfig(points_per_side=0, stability_score_thresh=2.0, box_nms_thresh=0.0)
    assert bad.problems("--pipeline.datamanager.sam.") == [
        "--pipeline.datamanager.sam.points-per-side 0: must be at least 1",
        "--pipeline.datamanager.sam.stability-score-thresh 2.0: must be in [0, 1]",
        "--pipeline.datamanager.sam.box-nms-thresh 0.0: must be in (0, 1]",
    ]
