"""Every bad input ends in an error that names the file (or run, or view) and the fix, and loses no
data already computed. One section per kind of bad input, small synthetic data throughout; see
also the narrower tests in test_masks, test_cache, test_sam_masks, test_dino_clip, test_ply and
test_tools_end_to_end."""

from __future__ import annotations

import errno
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from splatseg_ns.core import cache as cache_mod
from splatseg_ns.core import ply as ply_mod
from splatseg_ns.core.cache import (
    CacheMissError,
    Extractor,
    FeatureCache,
    ImageReadError,
    InputFilesError,
    OtherDatasetError,
    WeightsError,
    check_images_readable,
    extract_all,
    folder_extractor,
    load_image,
)
from splatseg_ns.core.losses import NonFiniteFeaturesError, check_finite_features
from splatseg_ns.core.masks import FolderMasks, MaskError, read_instance_map
from splatseg_ns.core.ply import write_gaussians_ply
from splatseg_ns.core.selection import precompute_click_index, segment_everything_by_clustering
from splatseg_ns.selection_file import (
    Selection,
    SelectionError,
    check_selection_matches,
    read_selection,
    write_selection,
)

# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def write_images(root: Path, n: int = 5, size=(12, 16), seed: int = 0, suffix: str = ".png"):
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n):
        path = root / "images" / f"frame_{k:03d}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class FakeMasks:
    """A masks extractor that counts its calls (coarse = bright pixels, fine = coarse by halves)."""

    def __init__(self):
        self.calls = []

    def compute(self, image):
        self.calls.append(image.shape)
        coarse = (image.mean(-1) > 128).astype(np.uint16)
        fine = coarse * (1 + (np.arange(image.shape[1])[None] >= image.shape[1] // 2)).astype(np.uint16)
        return {"coarse": coarse, "fine": fine}

    def extractor(self):
        return Extractor("masks", "fake", {"threshold": 128}, self.compute)


def save_mask(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids).save(path)
    return path


def hits(cache: FeatureCache, product: str, images) -> list:
    return [cache.lookup(product, p).hit for p in images]


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "scene"
    return root, write_images(root)


# ----------------------------------------------------------------------------------------------
# 1. A corrupt or truncated image
# ----------------------------------------------------------------------------------------------


def test_unreadable_image_is_named_with_the_fix(tmp_path):
    png, jpg = write_images(tmp_path, n=1)[0], write_images(tmp_path / "j", n=1, suffix=".jpg")[0]
    truncate(png)
    truncate(jpg)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    for path in (png, jpg, garbage):
        with pytest.raises(ImageReadError) as err:
            load_image(path)
        message = str(err.value)
        assert message.startswith(f"{path}: cannot read this image")
        assert "corrupt, truncated" in message and "Replace it with a good copy" in message


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


def test_images_the_training_loader_cannot_read_are_listed(dataset):
    """`check_images_readable` names the files when nerfstudio's loader says only 'image file is truncated'."""
    _, images = dataset
    check_images_readable(images)
    truncate(images[2])
    with pytest.raises(InputFilesError, match=rf"^1 image cannot be read:\n  {re.escape(str(images[2]))}: cannot read"):
        check_images_readable(images)


def test_training_datamanager_names_a_truncated_image(tmp_path):
    from splatseg_ns._torchvision_cpu import install

    install()
    from splatseg_ns.core.demo_scene import write_demo_scene
    from splatseg_ns.method_config import splatseg_trainer_config

    data = write_demo_scene(tmp_path / "scene", num_views=6, resolution=24)
    bad = sorted((data / "images").iterdir())[2]
    truncate(bad)
    datamanager = splatseg_trainer_config().pipeline.datamanager
    datamanager.data = datamanager.dataparser.data = data
    with pytest.raises(InputFilesError, match=rf"{re.escape(str(bad))}: cannot read this image.*Replace it"):
        datamanager.setup(device="cpu").cached_train  # nerfstudio loads the images on first use


# ----------------------------------------------------------------------------------------------
# 2. A mask file missing for one image
# ----------------------------------------------------------------------------------------------


def write_folder_masks(root: Path, images, skip=()):
    for k, image in enumerate(images):
        if k in skip:
            continue
        ids = np.full((12, 16), k + 1, np.uint8)
        for level in ("coarse", "fine"):
            save_mask(root / level / f"{image.stem}.png", ids)


def test_missing_mask_names_the_file_and_what_every_image_needs(tmp_path):
    write_folder_masks(tmp_path, [Path("a.jpg")])
    with pytest.raises(MaskError) as err:
        FolderMasks(tmp_path).load(Path("images/b.jpg"), (12, 16))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'coarse' / 'b.png'}: missing coarse mask for image images/b.jpg")
    assert f"Every training image needs {tmp_path}/coarse/<stem>.png and {tmp_path}/fine/<stem>.png" in message


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


# ----------------------------------------------------------------------------------------------
# 3. Mask ids beyond 16 bits
# ----------------------------------------------------------------------------------------------


def test_ids_beyond_16_bits_name_the_file_and_the_range(tmp_path):
    path = tmp_path / "coarse" / "img.tif"  # PNG stops at 16 bits; 32-bit ids come as TIFF
    path.parent.mkdir()
    Image.fromarray(np.array([[0, 70000], [3, 4]], dtype=np.int32), mode="I").save(path)
    with pytest.raises(MaskError) as err:
        read_instance_map(path, (2, 2))
    message = str(err.value)
    assert message.startswith(f"{path}: instance ids range over [0, 70000], beyond 16 bits")
    assert "Renumber the instances to 1..65535 (0 = no mask)" in message
    save_mask(tmp_path / "fine" / "img.png", np.ones((2, 2), np.uint8))
    with pytest.raises(MaskError, match=re.escape(f"{path}: instance ids range over")):
        FolderMasks(tmp_path).load(Path("img.jpg"), (2, 2))  # the folder source finds the .tif and says the same


# ----------------------------------------------------------------------------------------------
# 4. Masks of another size than the image
# ----------------------------------------------------------------------------------------------


def test_mask_of_another_shape_names_both_sizes(tmp_path):
    path = save_mask(tmp_path / "wide.png", np.zeros((4, 8), np.uint8))
    with pytest.raises(MaskError) as err:
        read_instance_map(path, (4, 4))
    message = str(err.value)
    assert message.startswith(f"{path}: mask is 8x4 but the image is 4x4, a different aspect ratio")
    assert "Masks must have the image's size (or a uniform rescale of it)" in message
    assert read_instance_map(path, (8, 16)).shape == (8, 16)  # a uniform rescale is fine


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


# ----------------------------------------------------------------------------------------------
# 5. An empty mask folder
# ----------------------------------------------------------------------------------------------


def test_empty_mask_folder_says_where_masks_go(tmp_path):
    (tmp_path / "coarse").mkdir()
    (tmp_path / "fine").mkdir()
    with pytest.raises(MaskError) as err:
        FolderMasks(tmp_path).check()
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'coarse'}: no coarse masks found")
    assert f"Put one instance-id PNG per training image there (named like the image: {tmp_path / 'coarse'}/<image " \
        "stem>.png)" in message
    assert "or point --pipeline.datamanager.mask-dir at the folder that holds coarse/ and fine/" in message


def test_empty_mask_folder_fails_once_before_any_extraction(dataset):
    root, images = dataset
    (root / "masks" / "coarse").mkdir(parents=True)
    with pytest.raises(MaskError, match=r"masks.coarse: no coarse masks found"):  # one error, not one per image
        extract_all(images, [folder_extractor(root / "masks")], root / "splatseg_cache", progress=False)
    assert not (root / "splatseg_cache" / "masks").exists()


# ----------------------------------------------------------------------------------------------
# 6. A cache written by another dataset or with other settings
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# 7. An interrupted cache write
# ----------------------------------------------------------------------------------------------


def test_interrupted_write_is_detected_redone_and_finished_entries_kept(dataset, monkeypatch):
    root, images = dataset
    fake = FakeMasks()
    real_replace = cache_mod.os.replace
    replaced = []

    def power_cut_during_third_data_file(src, dst):
        if str(dst).endswith(".png.npz"):
            replaced.append(dst)
            if len(replaced) == 3:
                raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(cache_mod.os, "replace", power_cut_during_third_data_file)
    with pytest.raises(KeyboardInterrupt):
        extract_all(images, [fake.extractor()], root / "splatseg_cache", progress=False)
    monkeypatch.setattr(cache_mod.os, "replace", real_replace)
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


# ----------------------------------------------------------------------------------------------
# 8. A missing or wrong checkpoint while offline
# ----------------------------------------------------------------------------------------------


def test_offline_checkpoint_error_keeps_the_entries_already_computed(tmp_path, offline):
    """SAM, DINO and CLIP messages themselves: test_sam_masks, test_dino_clip; this one: nothing is lost."""
    from splatseg_ns.core.clip_embeddings import ClipConfig, build_tiny_clip

    root = tmp_path / "scene"
    images = write_images(root, n=3, size=(40, 48))
    fake = FakeMasks()
    with pytest.raises(WeightsError) as err:
        extract_all(images, [fake.extractor(), cache_mod.clip_extractor(ClipConfig(), "cpu")], root / "splatseg_cache",
                    progress=False)
    message = str(err.value)
    target = offline / "open_clip" / "ViT-B-16_laion2b_s34b_b88k.bin"
    assert message.startswith(f"No CLIP ViT-B-16/laion2b_s34b_b88k checkpoint: {target} does not exist")
    assert "Temporary failure in name resolution" in message
    assert f"put it at {target}" in message and "--[pipeline.datamanager.]clip-config.checkpoint" in message
    cache = FeatureCache(root)
    assert hits(cache, "masks", images) == [True, False, False]  # the masks computed before the model was needed

    model, tokenizer = build_tiny_clip()
    summary = extract_all(images, [fake.extractor(), cache_mod.clip_extractor(ClipConfig(), "cpu", model, tokenizer)],
                          root / "splatseg_cache", progress=False)
    assert summary.counts == {"masks": {"hit": 1, "missing": 2}, "clip": {"missing": 3}}
    with pytest.raises(WeightsError, match=r"nowhere\.pth: CLIP ViT-B-16 checkpoint not found \(given by "):
        cache_mod.clip_extractor(ClipConfig(checkpoint=tmp_path / "nowhere.pth"), "cpu").compute(
            load_image(images[0]), masks=cache._load_arrays("masks", images[0]))


# ----------------------------------------------------------------------------------------------
# 9. A click on empty background
# ----------------------------------------------------------------------------------------------


def test_click_on_background_names_the_view_and_says_to_click_an_object():
    from splatseg_ns.tools.select import check_clicks_hit_something
    from splatseg_ns.trained_run import RunError, View

    camera = SimpleNamespace(width=torch.tensor([32]), height=torch.tensor([24]), distortion_params=None)
    view = View(name="frame_00001.png", split="train", index=0, image_path=Path("images/frame_00001.png"),
                camera=camera, file_size=(32, 24), source_camera=camera)
    accumulation = torch.zeros(24, 32)
    accumulation[5:15, 5:15] = 0.9
    check_clicks_hit_something(view, accumulation, [(10, 10)])
    with pytest.raises(RunError) as err:
        check_clicks_hit_something(view, accumulation, [(10, 10), (20.5, 3)])
    assert str(err.value) == ("Click (20.5, 3) on frame_00001.png hits empty background (rendered opacity 0.00); "
                              "click on the object you want.")
    with pytest.raises(RunError, match=r"Click \(40, 3\) is outside view frame_00001.png \(32x24 pixels\)"):
        check_clicks_hit_something(view, accumulation, [(40, 3)])


# ----------------------------------------------------------------------------------------------
# 10. A selection file from another run
# ----------------------------------------------------------------------------------------------


def test_selection_of_another_run_names_both_runs_and_writes_nothing(tmp_path):
    from splatseg_ns.tools.export import export_selection

    path = tmp_path / "sel.json"
    write_selection(path, Selection("/runs/a/config.yml", "10:aaaaaaaaaaaaaaaa", "coarse", [1, 2, 3]))
    selection = read_selection(path)
    with pytest.raises(SelectionError) as err:
        check_selection_matches(selection, "12:bbbbbbbbbbbbbbbb", path)
    assert str(err.value) == (
        f"{path} was made on run /runs/a/config.yml (10 Gaussians), not on this run (12 Gaussians, or the same run "
        "after further training). Use it with the run it was made on (--load-config /runs/a/config.yml), or select "
        "again on this run with `splatseg select --load-config ...`."
    )
    run = SimpleNamespace(fingerprint="10:cccccccccccccccc")  # as many Gaussians, other positions
    output = tmp_path / "object.ply"
    output.write_bytes(b"an earlier export")
    with pytest.raises(SelectionError, match="not on this run"):
        export_selection(run, selection, path, output)
    assert output.read_bytes() == b"an earlier export"
    assert json.loads(path.read_text())["indices"] == [1, 2, 3]


# ----------------------------------------------------------------------------------------------
# 11. Export to an unwritable path
# ----------------------------------------------------------------------------------------------


def gaussians(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return dict(means=rng.normal(size=(n, 3)), scales=rng.normal(-3, 0.5, size=(n, 3)), quats=rng.normal(size=(n, 4)),
                opacities=np.full((n, 1), 2.0), features_dc=rng.normal(size=(n, 3)), features_rest=None)


@pytest.mark.parametrize("failure", ["permission", "disk full"])
def test_unwritable_export_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, failure):
    output = tmp_path / "exports" / "object.ply"
    write_gaussians_ply(output, **gaussians(5))
    before = output.read_bytes()
    if failure == "permission":  # as a read-only folder does (root, who runs these tests, may write anywhere)
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(ply_mod.os, "open", refuse)
    else:
        def disk_full(src, dst):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(ply_mod.os, "replace", disk_full)
    with pytest.raises(OSError) as err:
        write_gaussians_ply(output, **gaussians(8, seed=1))
    reason = "Permission denied" if failure == "permission" else "No space left on device"
    assert err.value.strerror.startswith(f"Cannot write PLY to {output}: {reason}. Nothing was written")
    assert "a file already there is unchanged" in err.value.strerror
    assert "choose an output path in a folder you can write to" in err.value.strerror
    assert output.read_bytes() == before
    assert [p.name for p in output.parent.iterdir()] == ["object.ply"]


def test_export_to_a_folder_or_under_a_file_names_the_path(tmp_path):
    (tmp_path / "out.ply").mkdir()
    with pytest.raises(IsADirectoryError, match=re.escape(f"{tmp_path / 'out.ply'}: it is a directory. Give a file")):
        write_gaussians_ply(tmp_path / "out.ply", **gaussians(3))
    (tmp_path / "notes").write_text("x")
    with pytest.raises(OSError, match=re.escape(f"Cannot write PLY to {tmp_path / 'notes' / 'x.ply'}")):
        write_gaussians_ply(tmp_path / "notes" / "x.ply", **gaussians(3))
    assert (tmp_path / "notes").read_text() == "x"


# ----------------------------------------------------------------------------------------------
# 12. NaN in the per-Gaussian features
# ----------------------------------------------------------------------------------------------


def features_with_nan(n: int = 100, bad=(3, 50), value=float("nan")) -> torch.Tensor:
    features = torch.nn.functional.normalize(torch.randn(n, 24, generator=torch.Generator().manual_seed(0)), dim=-1)
    features[list(bad), 5] = value
    return features


def test_check_finite_features_counts_gaussians_and_names_the_fix():
    check_finite_features(features_with_nan(bad=[]))
    with pytest.raises(NonFiniteFeaturesError) as err:
        check_finite_features(features_with_nan(value=float("inf")), source="runs/x/config.yml", step=2999)
    assert str(err.value) == (
        "runs/x/config.yml: 2 of 100 Gaussians have NaN/inf segmentation features (the feature training diverged by "
        "step 2999). Retrain the features with a lower learning rate (--optimizers.seg-features.optimizer.lr), or "
        "resume from an earlier checkpoint of the run (ns-train ... --load-checkpoint FILE)."
    )
    with pytest.raises(NonFiniteFeaturesError, match=r"^1 of 4 Gaussians have NaN/inf DINO features .*dino-features"):
        check_finite_features(features_with_nan(n=4, bad=[1]), param="dino_features")


def test_selection_and_clustering_refuse_nan_features():
    features = features_with_nan()
    centers = torch.nn.functional.normalize(torch.randn(4, 12), dim=-1)
    with pytest.raises(NonFiniteFeaturesError, match=r"^2 of 100 Gaussians have NaN/inf segmentation features"):
        precompute_click_index(features[:, :12], centers)
    with pytest.raises(NonFiniteFeaturesError, match="feature training diverged"):
        segment_everything_by_clustering(torch.randn(100, 3), features, num_segments=2)


def test_select_tool_refuses_nan_features():
    from splatseg_ns.tools.select import level_index

    features = features_with_nan()
    run = SimpleNamespace(model=SimpleNamespace(candidate_centers_coarse=torch.eye(12)[:3]),
                          gaussian_features=lambda level: features[:, :12])
    with pytest.raises(NonFiniteFeaturesError, match="2 of 100 Gaussians have NaN/inf"):
        level_index(run, "coarse")


def nan_run(tmp_path: Path):
    """A TrainedRun, not loaded, with just what export reads before the features: a diverged run's
    fingerprint, config and features."""
    from splatseg_ns.trained_run import TrainedRun

    run = TrainedRun.__new__(TrainedRun)
    run.fingerprint, run.config_path, run.step = "100:aaaaaaaaaaaaaaaa", tmp_path / "config.yml", 3999
    run.model = SimpleNamespace(gauss_params={"seg_features": features_with_nan()})
    return run


def test_export_refuses_nan_features_naming_the_run_and_writes_nothing(tmp_path):
    from splatseg_ns.tools.export import export_segments, export_selection
    from splatseg_ns.trained_run import RunError

    run = nan_run(tmp_path)
    selection = Selection(str(run.config_path), run.fingerprint, "coarse", [1, 2, 3])
    expected = (rf"^{re.escape(str(run.config_path))}: 2 of 100 Gaussians have NaN/inf segmentation features "
                r"\(the feature training diverged by step 3999\)\. Retrain the features with a lower learning rate")
    with pytest.raises(RunError, match=expected):
        export_selection(run, selection, tmp_path / "sel.json", tmp_path / "object.ply")
    with pytest.raises(RunError, match=expected):
        export_segments(run, tmp_path / "segments")
    with pytest.raises(RunError, match=expected):
        export_segments(run, tmp_path / "segments", method="clustering")
    assert not (tmp_path / "object.ply").exists() and not (tmp_path / "segments").exists()


def make_model(num_points: int = 40):
    from splatseg_ns._torchvision_cpu import install

    install()
    from nerfstudio.data.scene_box import SceneBox

    from splatseg_ns.model import SplatsegModelConfig

    generator = torch.Generator().manual_seed(0)
    points = torch.rand(num_points, 3, generator=generator) * 2 - 1
    colours = torch.randint(0, 256, (num_points, 3), generator=generator, dtype=torch.uint8)
    config = SplatsegModelConfig(feature_stage_start=0)
    return config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])), num_train_data=2,
                        seed_points=(points, colours))


def test_training_stops_before_a_checkpoint_with_nan_features_is_saved():
    """nerfstudio keeps only the latest checkpoint: saving NaN features would destroy the last good one."""
    from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation

    model = make_model()
    model.step = 1000
    trainer = SimpleNamespace(config=SimpleNamespace(max_num_iterations=3000, steps_per_save=1000), _start_step=0)
    pipeline = SimpleNamespace(datamanager=None)
    callbacks = model.get_training_callbacks(TrainingCallbackAttributes(None, None, pipeline, trainer))
    for callback in callbacks:  # finite features: training goes on
        callback.run_callback_at_location(1000, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
    with torch.no_grad():
        model.seg_features[7] = float("nan")
    with pytest.raises(NonFiniteFeaturesError, match=r"1 of 40 Gaussians have NaN/inf .*diverged by step 1000"):
        for callback in callbacks:
            callback.run_callback_at_location(1000, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)


def test_global_candidates_refuse_nan_features():
    """GFL's refresh (and the select tool's fallback) would hand NaN mask averages to HDBSCAN."""
    from nerfstudio.cameras.cameras import Cameras

    model = make_model(80)
    poses = torch.tensor([[[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4.0]]] * 4)
    cameras = Cameras(camera_to_worlds=poses, fx=40.0, fy=40.0, cx=16.0, cy=16.0, width=32, height=32)
    generator = torch.Generator().manual_seed(0)
    cached = [{"coarse_mask": torch.randint(0, 3, (32, 32), generator=generator),
               "fine_mask": torch.randint(0, 5, (32, 32), generator=generator)} for _ in range(4)]
    datamanager = SimpleNamespace(train_dataset=SimpleNamespace(cameras=cameras), cached_train=cached)
    model.step = 2500
    with torch.no_grad():
        model.seg_features[:] = float("nan")
    with pytest.raises(NonFiniteFeaturesError, match=r"80 of 80 Gaussians have NaN/inf .*diverged by step 2500"):
        model.refresh_global_candidates(datamanager)
