"""Mask folders and undistortion: ids read exactly, every bad mask named with the fix."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splatseg_ns.core.extract.masks import (
    FolderMasks,
    MaskError,
    read_instance_map,
    undistort_instance_map,
    undistort_pixels,
)
from tests.helpers import save_mask, write_folder_masks


def save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path)
    return path


def test_reads_8_and_16_bit_ids(tmp_path):
    ids8 = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    ids16 = np.array([[0, 1000], [65535, 7]], dtype=np.uint16)
    np.testing.assert_array_equal(read_instance_map(save(tmp_path / "a.png", ids8), (2, 2)), ids8)
    np.testing.assert_array_equal(read_instance_map(save(tmp_path / "b.png", ids16), (2, 2)), ids16)


def test_resizes_nearest_without_blending_ids(tmp_path):
    ids = np.array([[1, 2], [3, 4]], dtype=np.uint8)
    out = read_instance_map(save(tmp_path / "m.png", ids), (4, 4))
    assert out.shape == (4, 4)
    assert set(np.unique(out)) == {1, 2, 3, 4}
    np.testing.assert_array_equal(out[:2, :2], 1)


def test_rejects_rgb_masks_with_the_file_named(tmp_path):
    path = save(tmp_path / "rgb.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(MaskError, match="rgb.png.*single-channel"):
        read_instance_map(path, (4, 4))


def test_rejects_ids_beyond_16_bits(tmp_path):
    path = tmp_path / "big.tif"  # PNG stops at 16 bits; 32-bit ids come as TIFF
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I").save(path)
    with pytest.raises(MaskError, match="beyond 16 bits"):
        read_instance_map(path, (1, 2))


def test_rejects_another_aspect_ratio(tmp_path):
    path = save(tmp_path / "wide.png", np.zeros((4, 8), dtype=np.uint8))
    with pytest.raises(MaskError, match="aspect ratio"):
        read_instance_map(path, (4, 4))


def test_rejects_corrupt_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(MaskError, match="broken.png"):
        read_instance_map(path, (4, 4))


def test_folder_source_names_the_missing_file(tmp_path):
    save(tmp_path / "coarse" / "img1.png", np.ones((4, 4), dtype=np.uint8))
    save(tmp_path / "fine" / "img1.png", np.ones((4, 4), dtype=np.uint8))
    source = FolderMasks(tmp_path)
    source.check()
    coarse, fine = source.load(tmp_path / "images" / "img1.jpg", (4, 4))
    assert coarse.dtype == np.int32 and fine.shape == (4, 4)
    with pytest.raises(MaskError, match=r"coarse.img2.png.*missing coarse mask"):
        source.load(tmp_path / "images" / "img2.jpg", (4, 4))


def test_empty_mask_folder_fails_before_training(tmp_path):
    (tmp_path / "coarse").mkdir()
    with pytest.raises(MaskError, match="no coarse masks"):
        FolderMasks(tmp_path).check()


def test_undistortion_without_distortion_is_identity():
    ids = np.arange(20, dtype=np.int32).reshape(4, 5)
    K = np.array([[10.0, 0, 2.5], [0, 10.0, 2.0], [0, 0, 1]])
    np.testing.assert_array_equal(undistort_instance_map(ids, K, np.zeros(6)), ids)


def test_undistortion_keeps_ids_exact_and_matches_the_image_remap():
    import cv2

    rng = np.random.default_rng(0)
    ids = np.kron(rng.integers(1, 60000, (8, 8)), np.ones((8, 8), dtype=np.int64)).astype(np.int32)  # 64x64 blocks
    K = np.array([[60.0, 0, 32.0], [0, 60.0, 32.0], [0, 0, 1]])
    distortion = np.array([-0.2, 0.05, 0.0, 0.0, 0.001, 0.0])  # k1 k2 k3 k4 p1 p2 (nerfstudio order)
    out = undistort_instance_map(ids, K, distortion)
    assert set(np.unique(out)) <= set(np.unique(ids))  # nearest: no blended ids
    # the same geometry as cv2.undistort on an image (what nerfstudio does), up to interpolation
    Ks = K.copy()
    Ks[:2, 2] -= 0.5
    d = np.array([-0.2, 0.05, 0.001, 0.0, 0.0, 0.0, 0, 0])
    newK, roi = cv2.getOptimalNewCameraMatrix(Ks, d, (64, 64), 0)
    image = cv2.undistort(ids.astype(np.float32), Ks, d, None, newK)
    x, y, w, h = roi
    image = image[y : y + h, x : x + w]
    assert out.shape == image.shape
    assert np.mean(out == np.rint(image)) > 0.8  # equal away from block edges, where bilinear blends


def test_views_with_equal_names_in_different_folders(tmp_path):
    from splatseg_ns.core.io.images import names_image
    from splatseg_ns.tools.make_benchmark import find_image

    for split in ("train", "test"):
        save(tmp_path / split / "r_0.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(FileNotFoundError, match="names several images"):
        find_image(tmp_path, "r_0")
    assert find_image(tmp_path, "test/r_0.png") == tmp_path / "test" / "r_0.png"
    assert names_image(Path("test/r_0"), tmp_path / "test" / "r_0.png")
    assert not names_image(Path("train/r_0.png"), tmp_path / "test" / "r_0.png")
    assert names_image(Path("r_0.png"), tmp_path / "train" / "r_0.png")


@pytest.mark.parametrize("fisheye", [False, True])
def test_a_pixel_lands_where_its_mask_is_undistorted_to(fisheye):
    """Clicks and masks on a distorted image file must meet in the same pixel of the undistorted view."""
    w, h = 270, 480
    K = np.array([[343.9, 0, 138.6], [0, 343.6, 241.3], [0, 0, 1]])
    distortion = np.array([0.2, -0.05, 0.01, 0.0]) if fisheye else np.array([0.25, -0.08, 0.0, 0.0, -0.003, 0.002])
    for x, y in [(135, 240), (20, 30), (250, 450), (60, 400)]:
        blob = np.zeros((h, w), np.int32)
        blob[y - 2 : y + 3, x - 2 : x + 3] = 1
        moved = undistort_instance_map(blob, K, distortion, fisheye)
        rows, cols = np.nonzero(moved)
        (px, py), = undistort_pixels(np.array([[x, y]]), K, distortion, (w, h), fisheye)
        assert abs(px - cols.mean()) < 1.0 and abs(py - rows.mean()) < 1.0, (x, y, px, py, cols.mean(), rows.mean())


def test_missing_mask_names_the_file_and_what_every_image_needs(tmp_path):
    write_folder_masks(tmp_path, [Path("a.jpg")])
    with pytest.raises(MaskError) as err:
        FolderMasks(tmp_path).load(Path("images/b.jpg"), (12, 16))
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'coarse' / 'b.png'}: missing coarse mask for image images/b.jpg")
    assert f"Every training image needs {tmp_path}/coarse/<stem>.png and {tmp_path}/fine/<stem>.png" in message


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


def test_mask_of_another_shape_names_both_sizes(tmp_path):
    path = save_mask(tmp_path / "wide.png", np.zeros((4, 8), np.uint8))
    with pytest.raises(MaskError) as err:
        read_instance_map(path, (4, 4))
    message = str(err.value)
    assert message.startswith(f"{path}: mask is 8x4 but the image is 4x4, a different aspect ratio")
    assert "Masks must have the image's size (or a uniform rescale of it)" in message
    assert read_instance_map(path, (8, 16)).shape == (8, 16)  # a uniform rescale is fine


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
