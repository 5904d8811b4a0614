"""Extraction on a local Ray instance (2 CPUs, tiny random models): the same cache as the serial path, resumable,
a worker killed mid-run, a corrupt image, Ctrl-C; and the clear errors of a missing extra, an unreachable
cluster and a cluster too small for one worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from splatseg_ns.core.extract.cache import FeatureCache
from splatseg_ns.core.extract.extraction import extract_all
from splatseg_ns.core.extract.extractors import Extractor
from splatseg_ns.core.extract.ray_extraction import RayOptions, RaySetupError, connect, ray_runner, worker_plan
from splatseg_ns.core.io.images import InputFilesError
from tests.helpers import truncate, write_images

ray = pytest.importorskip("ray", reason="the Ray extra: scripts/setup.sh installs it")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance for the module (each start costs seconds); the runs join it, never stop it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield ray
    ray.shutdown()


def real_extractors():
    """SAM masks, DINO features (PCA fit by the driver) and CLIP embeddings of the masks, tiny random models."""
    import torch

    from splatseg_ns.core.extract.clip_embeddings import ClipConfig
    from splatseg_ns.core.extract.dino_features import DinoConfig, load_dino
    from splatseg_ns.core.extract.extractors import clip_extractor, dino_extractor, sam_extractor
    from splatseg_ns.core.extract.sam_masks import SamMaskConfig
    from splatseg_ns.testing.tiny_models import build_tiny_clip, build_tiny_sam

    torch.manual_seed(0)  # the random DINO weights: the same models for both paths
    model, tokenizer = build_tiny_clip()
    return [
        sam_extractor(SamMaskConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0), "cpu",
                      model=build_tiny_sam()),
        dino_extractor(DinoConfig(resolution=32, num_components=8, pca_images=2), "cpu",
                       model=load_dino(DinoConfig(), pretrained=False)),
        clip_extractor(ClipConfig(), "cpu", model, tokenizer),
    ]


def entries(cache_dir: Path):
    """{(product, image key): (arrays, manifest without its creation time)} of every entry."""
    found = {}
    for manifest_path in sorted(cache_dir.rglob("*.png.json")):
        manifest = json.loads(manifest_path.read_text())
        manifest.pop("created")
        with np.load(manifest_path.with_suffix(".npz")) as npz:
            found[(manifest["product"], manifest["image"])] = ({k: npz[k] for k in npz.files}, manifest)
    return found


def test_ray_fills_the_same_cache_as_the_serial_path_and_a_rerun_computes_nothing(local_ray, tmp_path):
    serial_root, ray_root = tmp_path / "serial", tmp_path / "ray"
    images = write_images(serial_root, n=5, size=(40, 48))
    shutil.copytree(serial_root, ray_root)
    ray_images = [ray_root / p.relative_to(serial_root) for p in images]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each 1-CPU worker runs (and the driver's PCA fit): the same float sums
    try:
        serial = extract_all(images, real_extractors(), data_dir=serial_root, progress=False)
        on_ray = extract_all(ray_images, real_extractors(), data_dir=ray_root, progress=False,
                             runner=ray_runner(RayOptions(workers=2)))
    finally:
        torch.set_num_threads(threads)
    assert serial.counts == on_ray.counts == {p: {"missing": 5} for p in ("masks", "dino", "clip")}
    assert on_ray.workers == 2 and on_ray.images_computed == 5 and on_ray.images_failed == 0
    expected, got = entries(serial_root / "splatseg_cache"), entries(ray_root / "splatseg_cache")
    assert set(expected) == set(got) and len(got) == 15
    for key, (arrays, manifest) in expected.items():
        assert got[key][1] == manifest, key
        for name, array in arrays.items():
            np.testing.assert_array_equal(got[key][0][name], array, err_msg=f"{key} {name}")

    again = extract_all(ray_images, real_extractors(), data_dir=ray_root, progress=False,
                        runner=ray_runner(RayOptions(workers=2)))
    assert again.images_computed == 0 and again.counts == {p: {"hit": 5} for p in ("masks", "dino", "clip")}
    assert "5 images: 0 computed, 5 cached, 0 failed" in again.line()


def _counting_extractor(marker_dir: Path, die_on: str = "", sleep: float = 0.0) -> Extractor:
    """Masks of bright pixels; each call leaves a marker file; the first call on `die_on` kills its worker."""

    def compute(image, image_path):
        first = not (marker_dir / f"{image_path.name}.died").exists()
        if image_path.name == die_on and first:
            (marker_dir / f"{image_path.name}.died").touch()
            os._exit(1)  # the worker process dies as on OOM: no exception, no reply
        (marker_dir / f"{image_path.name}.{time.time_ns()}").touch()
        time.sleep(sleep)
        coarse = (image.mean(-1) > 128).astype(np.uint16)
        return {"coarse": coarse, "fine": coarse}

    return Extractor("masks", "counting", {"v": 1}, compute, needs_path=True)


def test_a_killed_worker_is_replaced_and_every_image_is_stored_once(local_ray, tmp_path):
    root, markers = tmp_path / "scene", tmp_path / "markers"
    markers.mkdir()
    images = write_images(root, n=6, size=(12, 16))
    summary = extract_all(images, [_counting_extractor(markers, die_on=images[2].name)], data_dir=root,
                          progress=False, runner=ray_runner(RayOptions(workers=2)))
    assert summary.counts == {"masks": {"missing": 6}} and summary.images_computed == 6  # stored once each
    assert (markers / f"{images[2].name}.died").exists()
    cache = FeatureCache(root)
    assert all(cache.lookup("masks", p).hit for p in images)


def test_a_worker_that_keeps_dying_fails_its_image_only(local_ray, tmp_path):
    root = tmp_path / "scene"
    images = write_images(root, n=3, size=(12, 16))

    def compute(image, image_path):
        if image_path.name == images[1].name:
            os._exit(1)
        return {"coarse": np.ones(image.shape[:2], np.uint16), "fine": np.ones(image.shape[:2], np.uint16)}

    with pytest.raises(InputFilesError, match=rf"{images[1].name}: its worker died 2 times") as err:
        extract_all(images, [Extractor("masks", "x", {}, compute, needs_path=True)], data_dir=root, progress=False,
                    runner=ray_runner(RayOptions(workers=1, max_retries=1)))
    assert err.value.summary.images_computed == 2 and err.value.summary.images_failed == 1
    assert [FeatureCache(root).lookup("masks", p).hit for p in images] == [True, False, True]


def test_a_corrupt_image_is_reported_by_name_and_the_others_are_stored(local_ray, tmp_path):
    root, markers = tmp_path / "scene", tmp_path / "markers"
    markers.mkdir()
    images = write_images(root, n=4, size=(12, 16))
    truncate(images[1])
    with pytest.raises(InputFilesError, match="1 image of 4 could not be processed") as err:
        extract_all(images, [_counting_extractor(markers)], data_dir=root, progress=False,
                    runner=ray_runner(RayOptions(workers=2)))
    assert images[1].name in str(err.value)
    assert [FeatureCache(root).lookup("masks", p).hit for p in images] == [True, False, True, True]


DRIVER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even when started in the background
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.core.test_ray_extraction import _counting_extractor
from splatseg_ns.core.extract.extraction import extract_all
from splatseg_ns.core.extract.ray_extraction import RayOptions, ray_runner
images = sorted(Path({scene!r}, "images").glob("*.png"))
try:
    extract_all(images, [_counting_extractor(Path({markers!r}), sleep=0.4)], data_dir=Path({scene!r}),
                progress=False, runner=ray_runner(RayOptions("local", workers=2)))
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def test_ctrl_c_leaves_only_valid_entries_and_a_rerun_completes_them(tmp_path):
    root, markers = tmp_path / "scene", tmp_path / "markers"
    markers.mkdir()
    images = write_images(root, n=16, size=(12, 16))
    script = DRIVER.format(root=str(ROOT), scene=str(root), markers=str(markers))
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=dict(os.environ, RAY_ADDRESS=""))
    cache = FeatureCache(root)
    deadline = time.time() + 120
    while time.time() < deadline and not any(cache.lookup("masks", p).hit for p in images):
        time.sleep(0.1)
    driver.send_signal(signal.SIGINT)
    output, _ = driver.communicate(timeout=60)
    assert driver.returncode == 130, output
    states = [cache.lookup("masks", p).status for p in images]
    assert "hit" in states and "missing" in states and set(states) <= {"hit", "missing"}, states
    summary = extract_all(images, [_counting_extractor(markers)], data_dir=root, progress=False)
    assert summary.images_computed == states.count("missing")
    assert all(cache.lookup("masks", p).hit for p in images)


def test_setup_errors_are_one_clear_line(local_ray, monkeypatch):
    with pytest.raises(RaySetupError, match="not enough for one worker of 8 CPUs; lower --ray-cpus-per-worker"):
        worker_plan({"CPU": 2.0}, RayOptions(cpus_per_worker=8))
    assert worker_plan({"CPU": 16.0, "GPU": 4.0}, RayOptions()) == (4, {"num_gpus": 1, "num_cpus": 1})
    assert worker_plan({"CPU": 2.0}, RayOptions(workers=1))[0] == 1
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    with pytest.raises(RaySetupError, match=r"--ray needs Ray, which is not installed: pip install 'splatseg\[ray\]'"):
        ray_runner(RayOptions())


def test_an_unreachable_or_malformed_address_is_one_clear_line(monkeypatch):
    """Checked before ray.init, which would retry an unreachable address for minutes."""
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: pytest.fail("ray.init must not be reached"))
    with pytest.raises(RaySetupError, match=r"--ray 127.0.0.1:9: cannot reach a Ray cluster there"):
        connect(ray, "127.0.0.1:9")
    with pytest.raises(RaySetupError, match=r"--ray headnode: give auto, local, or the cluster's address as host:port"):
        connect(ray, "headnode")
