"""The per-image cache: hits, misses, staleness, damaged entries, other datasets, what the training side reads."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from splatseg_ns.core.extract import cache as cache_mod
from splatseg_ns.core.extract.cache import CachedMasks, CacheMissError, FeatureCache, OtherDatasetError
from splatseg_ns.core.extract.extraction import extract_all
from splatseg_ns.core.extract.extractors import Extractor
from splatseg_ns.core.extract.masks import MaskError
from tests.helpers import Counting, FakeMasks, hits, write_images


def test_first_run_computes_everything_second_run_hits(dataset):
    root, images = dataset
    fake = Counting()
    summary = extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    assert len(fake.calls) == 5 and summary.counts["masks"] == {"missing": 5}
    summary = extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    assert len(fake.calls) == 5 and summary.counts["masks"] == {"hit": 5}

    cache = FeatureCache(root)
    coarse, fine = cache.load_masks(images[2])
    expected = fake.compute(np.asarray(Image.open(images[2]).convert("RGB")))
    np.testing.assert_array_equal(coarse, expected["coarse"])
    np.testing.assert_array_equal(fine, expected["fine"])
    assert coarse.dtype == np.int32
    manifest = json.loads(cache.manifest_path("masks", images[2]).read_text())
    assert manifest["image"] == "images/frame_002.png"
    assert manifest["extractor"] == "fake" and manifest["settings"] == {"threshold": 128}
    assert manifest["image_hw"] == [12, 16]
    assert not list((root / "splatseg_cache").rglob("*.tmp")), "temporary files left behind"


def test_changed_image_is_stale_and_only_it_is_recomputed(dataset):
    root, images = dataset
    fake = Counting()
    extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    Image.fromarray(np.full((12, 16, 3), 255, np.uint8)).save(images[1])
    cache = FeatureCache(root)
    found = cache.lookup("masks", images[1])
    assert found.status == "stale" and "image changed" in found.reason
    with pytest.raises(CacheMissError, match="image changed.*splatseg masks --data"):
        cache.load_masks(images[1])
    summary = extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    assert summary.counts["masks"] == {"hit": 4, "stale": 1} and len(fake.calls) == 6
    assert cache.load_masks(images[1])[0].all()


def test_changed_settings_recompute_and_say_what_changed(dataset):
    root, images = dataset
    extract_all(images, [Counting(128).extractor()], root / "splatseg_cache", progress=False)
    other = Counting(64)
    found = FeatureCache(root).lookup("masks", images[0], other.extractor().settings)
    assert found.status == "stale" and "threshold 128 -> 64" in found.reason
    summary = extract_all(images, [other.extractor()], root / "splatseg_cache", progress=False)
    assert summary.counts["masks"] == {"stale": 5} and len(other.calls) == 5


def test_crash_between_data_and_manifest_resumes(dataset, monkeypatch):
    root, images = dataset
    fake = Counting()
    real_write_json = cache_mod.atomic_write_json
    manifests = []

    def crash_on_third_manifest(path, obj):
        if path.name.endswith(".png.json"):
            manifests.append(path)
            if len(manifests) == 3:
                raise KeyboardInterrupt("power cut")
        real_write_json(path, obj)

    monkeypatch.setattr(cache_mod, "atomic_write_json", crash_on_third_manifest)
    with pytest.raises(KeyboardInterrupt):
        extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    monkeypatch.setattr(cache_mod, "atomic_write_json", real_write_json)
    assert len(fake.calls) == 3
    cache = FeatureCache(root)
    third = cache.lookup("masks", images[2])
    assert third.status == "missing" and "interrupted" in third.reason
    assert cache.data_path("masks", images[2]).exists()
    with pytest.raises(CacheMissError):
        cache.load_masks(images[2])

    summary = extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    assert summary.counts["masks"] == {"hit": 2, "missing": 3}
    assert len(fake.calls) == 6  # 3 before the crash + the 3 left


def test_truncated_or_altered_data_is_recomputed(dataset):
    root, images = dataset
    fake = Counting()
    extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    cache = FeatureCache(root)
    data = cache.data_path("masks", images[0])
    data.write_bytes(data.read_bytes()[:20])
    found = cache.lookup("masks", images[0])
    assert found.status == "corrupt" and "bytes" in found.reason
    with pytest.raises(CacheMissError, match="corrupt"):
        cache.load_masks(images[0])
    other = cache.data_path("masks", images[3])
    raw = bytearray(other.read_bytes())
    raw[-30] ^= 0xFF  # same size, other content
    other.write_bytes(bytes(raw))
    assert cache.lookup("masks", images[3]).status == "corrupt"
    cache.data_path("masks", images[4]).unlink()
    assert cache.lookup("masks", images[4]).reason == "data file missing"

    summary = extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    assert summary.counts["masks"] == {"corrupt": 3, "hit": 2}
    for image in images:
        assert cache.lookup("masks", image).hit


def test_cache_of_another_dataset_is_detected(tmp_path):
    scene_a, scene_b = tmp_path / "a", tmp_path / "b"
    images_a = write_images(scene_a, seed=1)
    images_b = write_images(scene_b, seed=2)  # same names, other pictures
    shared = tmp_path / "shared_cache"
    extract_all(images_a, [Counting().extractor()], shared, data_dir=scene_a, progress=False)
    with pytest.raises(OtherDatasetError, match=r"another dataset .*a: 5 images.*none of the 5 images.*5 share a name"):
        extract_all(images_b, [Counting().extractor()], shared, data_dir=scene_b, progress=False)

    cache_b = FeatureCache(scene_b, shared)
    with pytest.raises(CacheMissError, match=f"written for the dataset at {re.escape(str(scene_a.resolve()))}"):
        cache_b.load_masks(images_b[0])

    fake = Counting()
    summary = extract_all(images_b, [fake.extractor()], shared, data_dir=scene_b, progress=False,
                          overwrite_other_dataset=True)
    assert summary.counts["masks"] == {"stale": 5}
    assert json.loads((shared / "dataset.json").read_text())["data_dir"] == str(scene_b.resolve())


def test_an_edited_dataset_is_not_another_dataset(dataset):
    root, images = dataset
    extract_all(images, [Counting().extractor()], root / "splatseg_cache", progress=False)
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(images[0])
    extra = write_images(root / "more", n=1, seed=9)
    summary = extract_all(images + extra, [Counting().extractor()], root / "splatseg_cache", progress=False)
    assert summary.counts["masks"] == {"hit": 4, "stale": 1, "missing": 1}


def test_dependent_product_goes_stale_only_when_its_input_changes(dataset):
    root, images = dataset
    embed_calls = []

    def embed(image, masks):
        embed_calls.append(1)
        return {"coarse_ids": np.unique(masks["coarse"]).astype(np.int32)}

    clip_like = Extractor("clip", "fake-clip", {}, embed, requires=("masks",))
    extract_all(images, [clip_like, Counting(128).extractor()], root / "splatseg_cache", progress=False)
    assert len(embed_calls) == 5
    # Same settings, same masks: nothing to do.
    extract_all(images, [Counting(128).extractor(), clip_like], root / "splatseg_cache", progress=False)
    assert len(embed_calls) == 5
    # Other masks: every embedding is recomputed from them.
    summary = extract_all(images, [Counting(10).extractor(), clip_like], root / "splatseg_cache", progress=False)
    assert summary.counts["clip"] == {"stale": 5} and len(embed_calls) == 10
    with pytest.raises(ValueError, match="circular"):
        extract_all(images, [Extractor("a", "x", {}, embed, ("b",)), Extractor("b", "x", {}, embed, ("a",))],
                    root / "c2", data_dir=root, progress=False)


def test_an_entry_is_computed_once_and_reading_errors(dataset):
    root, images = dataset
    cache = FeatureCache(root)
    with pytest.raises(CacheMissError, match=r"not computed.*splatseg masks --data .*scene"):
        cache.load_masks(images[0])
    fake = Counting()
    extract_all(images[:1], [fake.extractor()], data_dir=root, progress=False)
    first = cache.read("masks", images[0])
    extract_all(images[:1], [fake.extractor()], data_dir=root, progress=False)
    again = cache.read("masks", images[0])
    assert len(fake.calls) == 1
    np.testing.assert_array_equal(first["coarse"], again["coarse"])
    source = CachedMasks(cache)
    source.check()
    coarse, fine = source.load(images[0], (24, 32))  # nearest upscale to a 2x image
    assert coarse.shape == (24, 32)
    np.testing.assert_array_equal(coarse[::2, ::2], first["coarse"])
    with pytest.raises(CacheMissError, match="no cached masks"):
        CachedMasks(FeatureCache(root / "elsewhere")).check()


def test_cached_masks_of_another_shape_say_to_recompute(dataset):
    root, images = dataset
    extract_all(images, [FakeMasks().extractor()], root / "splatseg_cache", progress=False)
    cache = FeatureCache(root)
    with pytest.raises(MaskError) as err:
        cache.load_masks(images[0], (12, 12))
    entry = cache.data_path("masks", images[0])
    assert str(err.value).startswith(f"{entry}: cached masks are 16x12 but the image is 12x12")
    assert f"Recompute them: splatseg masks --data {root.resolve()}" in str(err.value)
    assert cache.lookup("masks", images[0]).hit  # nothing was touched


def test_cache_of_another_dataset_is_refused_and_left_intact(tmp_path):
    scene_a, scene_b = tmp_path / "a", tmp_path / "b"
    images_a, images_b = write_images(scene_a, seed=1), write_images(scene_b, seed=2)  # same names, other pictures
    shared = tmp_path / "shared_cache"
    extract_all(images_a, [FakeMasks().extractor()], shared, data_dir=scene_a, progress=False)
    fake = FakeMasks()
    with pytest.raises(OtherDatasetError) as err:
        extract_all(images_b, [fake.extractor()], shared, data_dir=scene_b, progress=False)
    message = str(err.value)
    assert message.startswith(f"{shared.resolve()} holds a cache written for another dataset "
                              f"({scene_a.resolve()}: 5 images")
    assert "it was left untouched" in message
    assert "`splatseg masks --cache-dir DIR`" in message and "--pipeline.datamanager.cache-dir DIR" in message
    assert f"or delete {shared.resolve()} to start it afresh" in message
    assert fake.calls == []
    assert hits(FeatureCache(scene_a, shared), "masks", images_a) == [True] * 5

    with pytest.raises(CacheMissError) as err:  # the training side reading it says the same
        FeatureCache(scene_b, shared).load_masks(images_b[0])
    assert f"written for the dataset at {scene_a.resolve()}" in str(err.value)
    assert f"Run `splatseg masks --data {scene_b.resolve()} --cache-dir {shared.resolve()}` first" in str(err.value)


def test_cache_of_other_settings_says_what_changed_and_is_recomputed(dataset):
    root, images = dataset
    extract_all(images, [FakeMasks().extractor()], root / "splatseg_cache", progress=False)
    cache = FeatureCache(root)
    with pytest.raises(CacheMissError) as err:
        cache.read("masks", images[0], settings={"threshold": 64})
    message = str(err.value)
    assert message.startswith(f"{cache.data_path('masks', images[0])}: no usable masks")
    assert "stale: extractor settings changed: threshold 128 -> 64" in message
    assert f"Run `splatseg masks --data {root.resolve()}` first" in message
    other = FakeMasks()
    summary = extract_all(images, [Extractor("masks", "fake", {"threshold": 64}, other.compute)],
                          root / "splatseg_cache", progress=False)
    assert summary.counts["masks"] == {"stale": 5}
