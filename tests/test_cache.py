"""The per-image extraction cache: hits, misses, staleness, crashes, resuming, shards, other datasets."""

import json
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splatseg_ns.core import cache as cache_mod
from splatseg_ns.core.cache import (
    CacheMissError,
    CachedMasks,
    Extractor,
    FeatureCache,
    OtherDatasetError,
    WeightsError,
    extract_all,
    resolve_checkpoint,
    shard_images,
)
from splatseg_ns.core.dino_features import load_dino as real_load_dino


def write_images(root: Path, n: int = 5, seed: int = 0, size=(12, 16)):
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        path = root / "images" / f"frame_{k:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


class Counting:
    """A fake masks extractor that counts its calls (coarse = bright pixels, fine = quadrants)."""

    def __init__(self, threshold=128, product="masks"):
        self.calls = []
        self.threshold = threshold
        self.product = product

    def compute(self, image):
        self.calls.append(image.shape)
        coarse = (image.mean(-1) > self.threshold).astype(np.uint16)
        h, w = coarse.shape
        fine = coarse * (1 + (np.arange(h)[:, None] >= h // 2) + 2 * (np.arange(w)[None] >= w // 2)).astype(np.uint16)
        return {"coarse": coarse, "fine": fine}

    def extractor(self):
        return Extractor(self.product, "fake", {"threshold": self.threshold}, self.compute)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "scene"
    return root, write_images(root)


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


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "entry.npz"
    cache_mod.atomic_write_bytes(target, b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.os, "replace", failing_replace)
    with pytest.raises(OSError):
        cache_mod.atomic_write_bytes(target, b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.npz"]


def test_two_shards_cover_every_image_exactly_once(dataset):
    root, images = dataset
    cache = FeatureCache(root)
    parts = [shard_images(images[::-1], (i, 2), cache) for i in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(images)
    assert not set(parts[0]) & set(parts[1])
    assert parts[0] == [images[0], images[2], images[4]]  # k % n over name order, whatever the input order

    fakes = [Counting(), Counting()]
    for i, fake in enumerate(fakes):
        summary = extract_all(images[::-1] if i else images, [fake.extractor()], root / "splatseg_cache", shard=(i, 2),
                              progress=False)
        assert summary.images == len(parts[i])
    assert [len(f.calls) for f in fakes] == [3, 2]
    whole = Counting()
    summary = extract_all(images, [whole.extractor()], root / "splatseg_cache", progress=False)
    assert summary.counts["masks"] == {"hit": 5}
    assert whole.calls == []
    with pytest.raises(ValueError, match="shard"):
        shard_images(images, (2, 2), cache)


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


def test_get_or_compute_and_reading_errors(dataset):
    root, images = dataset
    cache = FeatureCache(root)
    with pytest.raises(CacheMissError, match=r"not computed.*splatseg masks --data .*scene"):
        cache.load_masks(images[0])
    fake = Counting()
    first = cache.get_or_compute(images[0], fake.extractor())
    again = cache.get_or_compute(images[0], fake.extractor())
    assert len(fake.calls) == 1
    np.testing.assert_array_equal(first["coarse"], again["coarse"])
    source = CachedMasks(cache)
    source.check()
    coarse, fine = source.load(images[0], (24, 32))  # nearest upscale to a 2x image
    assert coarse.shape == (24, 32)
    np.testing.assert_array_equal(coarse[::2, ::2], first["coarse"])
    with pytest.raises(CacheMissError, match="no cached masks"):
        CachedMasks(FeatureCache(root / "elsewhere")).check()


def test_checkpoints_download_once_into_the_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLATSEG_CACHE", str(tmp_path / "weights"))
    downloads = []

    def fake_download(url, destination):
        downloads.append(url)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(b"weights")

    monkeypatch.setattr(cache_mod, "_download", fake_download)
    url = "https://example.org/models/model_abc.pth"
    path = resolve_checkpoint(None, url, "Test", "--test.checkpoint")
    assert path == tmp_path / "weights" / "model_abc.pth" and path.read_bytes() == b"weights"
    assert resolve_checkpoint(None, url, "Test", "--test.checkpoint") == path
    assert downloads == [url]

    def offline(url, destination):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(cache_mod, "_download", offline)
    expected = r"other\.pth does not exist and downloading .*no network.*put it at .*--test.checkpoint"
    with pytest.raises(WeightsError, match=expected):
        resolve_checkpoint(None, "https://example.org/other.pth", "Test", "--test.checkpoint")
    with pytest.raises(WeightsError, match=r"missing\.pth: Test checkpoint not found \(given by --test.checkpoint\)"):
        resolve_checkpoint(tmp_path / "missing.pth", url, "Test", "--test.checkpoint")


def test_masks_command_end_to_end_with_tiny_models(tmp_path, monkeypatch):
    """`run_masks_command` with the real extractors, their models swapped for tiny random ones."""
    import splatseg_ns.core.clip_embeddings as clip_mod
    import splatseg_ns.core.dino_features as dino_mod
    import splatseg_ns.core.sam_masks as sam_mod

    root = tmp_path / "scene"
    images = write_images(root, n=3, size=(40, 48))
    loads = []
    monkeypatch.setattr(sam_mod, "load_sam", lambda config, device: loads.append("sam") or sam_mod.build_tiny_sam())
    monkeypatch.setattr(dino_mod, "load_dino",
                        lambda config, device: loads.append("dino") or dino_model_small())
    monkeypatch.setattr(clip_mod, "load_clip",
                        lambda config, device: loads.append("clip") or clip_mod.build_tiny_clip())
    sam_config = sam_mod.SamMaskConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    dino_config = dino_mod.DinoConfig(resolution=32, num_components=8, pca_images=2)
    kwargs = dict(sam_config=sam_config, dino=True, clip=True, dino_config=dino_config, device="cpu", progress=False)

    summary = cache_mod.run_masks_command(root, images, None, shard=(0, 2), **kwargs)
    assert summary.images == 2 and summary.counts["masks"] == {"missing": 2}
    summary = cache_mod.run_masks_command(root, images, None, shard=(1, 2), **kwargs)
    assert summary.counts == {"masks": {"missing": 1}, "dino": {"missing": 1}, "clip": {"missing": 1}}
    loads.clear()
    summary = cache_mod.run_masks_command(root, images, None, **kwargs)
    assert summary.counts["dino"] == {"hit": 3} and loads == []  # nothing to do: no model loaded

    cache = FeatureCache(root)
    coarse, fine = cache.load_masks(images[0])
    assert coarse.shape == fine.shape == (40, 48)
    features = cache.load_dino(images[0])
    assert features.dtype == np.float16 and features.shape == (3, 4, 8)  # 32 px long side / patch 8
    levels = cache.load_clip(images[0])
    for level, ids_map in (("coarse", coarse), ("fine", fine)):
        ids, emb = levels[level]
        np.testing.assert_array_equal(ids, np.unique(ids_map[ids_map > 0]))
        np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1, atol=2e-3)
    # The scene-wide PCA basis was fit once and every entry names it.
    pca_record = json.loads((root / "splatseg_cache" / "dino" / "_pca.json").read_text())
    assert 0 < pca_record["explained_variance"] <= 1
    for image in images:
        assert cache.lookup("dino", image).manifest["settings"]["pca_sha1"] == pca_record["data_sha1"]


_DINO = {}


def dino_model_small():
    """The real DINO ViT-S/8 architecture with random weights (built once)."""
    from splatseg_ns.core.dino_features import DinoConfig

    if "model" not in _DINO:
        _DINO["model"] = real_load_dino(DinoConfig(), pretrained=False)
    return _DINO["model"]
