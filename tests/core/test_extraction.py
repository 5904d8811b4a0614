"""Filling the cache: shards, and bad input files that are reported together while every other entry is kept."""

from __future__ import annotations

import pytest

from splatseg_ns.core import files as files_mod
from splatseg_ns.core.extract import extractors as extractors_mod
from splatseg_ns.core.extract.cache import CacheMissError, FeatureCache
from splatseg_ns.core.extract.extraction import extract_all, shard_images
from splatseg_ns.core.extract.extractors import folder_extractor
from splatseg_ns.core.extract.masks import MaskError
from splatseg_ns.core.io.images import ImageReadError, InputFilesError, load_image
from splatseg_ns.core.io.weights import WeightsError
from splatseg_ns.testing.tiny_models import build_tiny_clip
from tests.helpers import Counting, FakeMasks, hits, truncate, write_folder_masks, write_images


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


def test_bad_images_are_skipped_reported_together_and_the_rest_is_kept(dataset):
    root, images = dataset
    truncate(images[1])
    images[3].write_bytes(b"not an image at all")
    fake = FakeMasks()
    with pytest.raises(InputFilesError) as err:
        extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    message = str(err.value)
    assert message.startswith("2 images of 5 could not be processed")
    assert "are kept; a rerun computes only what is missing" in message
    assert f"{images[1]}: cannot read this image" in message and "truncated" in message
    assert f"{images[3]}: cannot read this image" in message
    assert [type(e) for e in err.value.errors] == [ImageReadError, ImageReadError]
    cache = FeatureCache(root)
    assert len(fake.calls) == 3 and hits(cache, "masks", images) == [True, False, True, False, True]

    write_images(root, n=5)  # good copies back (same content as before)
    summary = extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    assert summary.counts["masks"] == {"hit": 3, "missing": 2} and len(fake.calls) == 5


def test_missing_mask_in_extraction_keeps_the_other_entries(dataset):
    """The folder masks go through the cache when CLIP embeds them (text queries)."""
    root, images = dataset
    write_folder_masks(root, images, skip=(2,))
    with pytest.raises(InputFilesError) as err:
        extract_all(images, [folder_extractor(root)], root / "splatseg_cache", progress=False)
    assert str(err.value).startswith("1 image of 5 could not be processed")
    assert f"{root / 'coarse' / 'frame_002.png'}: missing coarse mask" in str(err.value)
    cache = FeatureCache(root)
    assert hits(cache, "masks", images) == [True, True, False, True, True]

    write_folder_masks(root, images[2:3])  # the mask of frame_002 (id 1 here) added
    summary = extract_all(images, [folder_extractor(root)], root / "splatseg_cache", progress=False)
    assert summary.counts["masks"] == {"hit": 4, "missing": 1}


def test_empty_mask_folder_fails_once_before_any_extraction(dataset):
    root, images = dataset
    (root / "masks" / "coarse").mkdir(parents=True)
    with pytest.raises(MaskError, match=r"masks.coarse: no coarse masks found"):  # one error, not one per image
        extract_all(images, [folder_extractor(root / "masks")], root / "splatseg_cache", progress=False)
    assert not (root / "splatseg_cache" / "masks").exists()


def test_interrupted_write_is_detected_redone_and_finished_entries_kept(dataset, monkeypatch):
    root, images = dataset
    fake = FakeMasks()
    real_replace = files_mod.os.replace
    replaced = []

    def power_cut_during_third_data_file(src, dst):
        if str(dst).endswith(".png.npz"):
            replaced.append(dst)
            if len(replaced) == 3:
                raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(files_mod.os, "replace", power_cut_during_third_data_file)
    with pytest.raises(KeyboardInterrupt):
        extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    monkeypatch.setattr(files_mod.os, "replace", real_replace)
    cache = FeatureCache(root)
    assert hits(cache, "masks", images) == [True, True, False, False, False]
    assert not list((root / "splatseg_cache").rglob("*.tmp")), "the temporary file of the cut write is left"

    # a crash between a data file and its manifest leaves data without a manifest: a miss, said as such
    entry = cache.write("masks", images[2], fake.compute(load_image(images[2])), "fake", {"threshold": 128})
    cache.manifest_path("masks", images[2]).unlink()
    with pytest.raises(CacheMissError) as err:
        cache.load_masks(images[2])
    message = str(err.value)
    assert message.startswith(f"{cache.data_path('masks', images[2])}: no usable masks for image {images[2]}")
    assert "missing: data without a manifest (interrupted write)" in message
    assert f"Run `splatseg masks --data {root.resolve()}` first" in message
    assert entry["data_bytes"] == cache.data_path("masks", images[2]).stat().st_size

    summary = extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    assert summary.counts["masks"] == {"hit": 2, "missing": 3}
    assert hits(cache, "masks", images) == [True] * 5


def test_offline_checkpoint_error_keeps_the_entries_already_computed(tmp_path, offline):
    """SAM, DINO and CLIP messages themselves: test_sam_masks, test_dino_clip; this one: nothing is lost."""
    from splatseg_ns.core.extract.clip_embeddings import ClipConfig

    root = tmp_path / "scene"
    images = write_images(root, n=3, size=(40, 48))
    fake = FakeMasks()
    with pytest.raises(WeightsError) as err:
        extract_all(images, [fake.extractor(), extractors_mod.clip_extractor(ClipConfig(), "cpu")], root / "splatseg_cache",
                    progress=False)
    message = str(err.value)
    target = offline / "open_clip" / "ViT-B-16_laion2b_s34b_b88k.bin"
    assert message.startswith(f"No CLIP ViT-B-16/laion2b_s34b_b88k checkpoint: {target} does not exist")
    assert "Temporary failure in name resolution" in message
    assert f"put it at {target}" in message and "--[pipeline.datamanager.]clip-config.checkpoint" in message
    cache = FeatureCache(root)
    assert hits(cache, "masks", images) == [True, False, False]  # the masks computed before the model was needed

    model, tokenizer = build_tiny_clip()
    summary = extract_all(images, [fake.extractor(), extractors_mod.clip_extractor(ClipConfig(), "cpu", model, tokenizer)],
                          root / "splatseg_cache", progress=False)
    assert summary.counts == {"masks": {"hit": 1, "missing": 2}, "clip": {"missing": 3}}
    with pytest.raises(WeightsError, match=r"nowhere\.pth: CLIP ViT-B-16 checkpoint not found \(given by "):
        extractors_mod.clip_extractor(ClipConfig(checkpoint=tmp_path / "nowhere.pth"), "cpu").compute(
            load_image(images[0]), masks=cache.load_arrays("masks", images[0]))
