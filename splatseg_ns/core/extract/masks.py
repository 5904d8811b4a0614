"""Two-level instance masks (coarse = whole objects, fine = parts) read from a folder.

The contract (README, "Masks"): `DIR/coarse/<image stem>.png` and `DIR/fine/<image stem>.png`, 8- or
16-bit single-channel instance ids, 0 = no mask, the image's size or a uniform rescale of it
(resized nearest, so ids never blend). Masks follow the image through undistortion with the
same remap nerfstudio applies to the image, sampled nearest.
Every failure names the file and says what to do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from splatseg_ns.core.features import LEVELS
from splatseg_ns.core.io.images import same_aspect

MASK_SUFFIXES = (".png", ".tif", ".tiff")


class MaskError(ValueError):
    """A mask file that cannot be used; the message names the file and the fix."""


def read_instance_map(path: Path, image_hw: Tuple[int, int]) -> np.ndarray:
    """Read one instance-id map as int32 [H, W], resized (nearest) to the image's size."""
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            ids = np.array(im)
    except FileNotFoundError:
        raise
    except Exception as err:  # PIL raises many types for corrupt files
        raise MaskError(f"{path}: cannot read mask ({err}). Re-export it as an 8- or 16-bit PNG.") from err
    if ids.ndim != 2 or mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I", "1"):
        raise MaskError(
            f"{path}: mask has mode {mode} and shape {ids.shape}; expected a single-channel 8- or 16-bit "
            "image of instance ids (0 = no mask). Save ids with e.g. "
            "Image.fromarray(ids.astype(np.uint16)).save(path)."
        )
    ids = ids.astype(np.int64)
    if ids.min() < 0 or ids.max() > 65535:
        raise MaskError(
            f"{path}: instance ids range over [{ids.min()}, {ids.max()}], beyond 16 bits. "
            "Renumber the instances to 1..65535 (0 = no mask)."
        )
    h, w = image_hw
    if ids.shape != (h, w):
        mh, mw = ids.shape
        if not same_aspect((mh, mw), (h, w)):
            raise MaskError(
                f"{path}: mask is {mw}x{mh} but the image is {w}x{h}, a different aspect ratio. "
                "Masks must have the image's size (or a uniform rescale of it)."
            )
        ids = np.array(Image.fromarray(ids.astype(np.int32)).resize((w, h), Image.NEAREST))
    return ids.astype(np.int32)


@dataclass(frozen=True)
class FolderMasks:
    """Masks the user brings: `root/coarse/<stem>.png` and `root/fine/<stem>.png`."""

    root: Path

    def path_for(self, level: str, image_path: Path) -> Path:
        folder = self.root / level
        for suffix in MASK_SUFFIXES:
            candidate = folder / (Path(image_path).stem + suffix)
            if candidate.exists():
                return candidate
        return folder / (Path(image_path).stem + ".png")

    def check(self) -> None:
        """Fail early, before any training, when the folder layout is wrong."""
        for level in LEVELS:
            folder = self.root / level
            if not folder.is_dir() or not any(folder.iterdir()):
                raise MaskError(
                    f"{folder}: no {level} masks found. Put one instance-id PNG per training image there "
                    f"(named like the image: {folder}/<image stem>.png), or point "
                    "--pipeline.datamanager.mask-dir at the folder that holds coarse/ and fine/."
                )

    def load(self, image_path: Path, image_hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        """(coarse, fine) int32 instance maps for one image."""
        maps = []
        for level in LEVELS:
            path = self.path_for(level, image_path)
            if not path.exists():
                raise MaskError(
                    f"{path}: missing {level} mask for image {image_path}. Every training image needs "
                    f"{self.root}/coarse/<stem>.png and {self.root}/fine/<stem>.png."
                )
            maps.append(read_instance_map(path, image_hw))
        return maps[0], maps[1]


def undistort_instance_map(
    ids: np.ndarray,
    K: np.ndarray,
    distortion: np.ndarray,
    fisheye: bool = False,
) -> np.ndarray:
    """Apply to an instance map the undistortion nerfstudio applies to its image, sampled nearest.

    Mirrors `nerfstudio.data.datamanagers.full_images_datamanager._undistort_image` (same new
    camera matrix and crop) so that masks and images stay pixel-aligned. `K` is the original
    3x3 intrinsics, `distortion` nerfstudio's (k1, k2, k3, k4, p1, p2) for perspective cameras
    or (k1, k2, k3, k4) for fisheye.
    """
    import cv2

    h, w = ids.shape
    K = K.astype(np.float64).copy()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    src = ids.astype(np.float32)  # float32 holds every 16-bit id exactly
    if fisheye:
        d = np.asarray(distortion[:4], dtype=np.float64)
        newK = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, d, (w, h), np.eye(3), balance=0)
        map1, map2 = cv2.fisheye.initUndistortRectifyMap(K, d, np.eye(3), newK, (w, h), cv2.CV_32FC1)
        return cv2.remap(src, map1, map2, interpolation=cv2.INTER_NEAREST).astype(np.int32)
    d = np.asarray(distortion, dtype=np.float64)
    if d[3] != 0:
        raise MaskError("The 4th Brown distortion parameter is not supported by nerfstudio's undistortion.")
    d = np.array([d[0], d[1], d[4], d[5], d[2], d[3], 0, 0])
    if not np.any(d):
        return ids
    newK, roi = cv2.getOptimalNewCameraMatrix(K, d, (w, h), 0)
    map1, map2 = cv2.initUndistortRectifyMap(K, d, None, newK, (w, h), cv2.CV_32FC1)
    out = cv2.remap(src, map1, map2, interpolation=cv2.INTER_NEAREST).astype(np.int32)
    x, y, rw, rh = roi
    return out[y : y + rh, x : x + rw]


def undistort_pixels(
    points: np.ndarray,
    K: np.ndarray,
    distortion: np.ndarray,
    image_wh: Tuple[int, int],
    fisheye: bool = False,
) -> np.ndarray:
    """Where pixels (x, y) [N, 2] of the distorted image land in nerfstudio's undistorted (cropped) image.

    The forward map of the remap in `undistort_instance_map` (same new camera matrix, crop and
    half-pixel convention), so a click on the image file and its mask pixel end up at the same
    place in the rendered view.
    """
    import cv2

    w, h = image_wh
    K = K.astype(np.float64).copy()
    K[0, 2] -= 0.5
    K[1, 2] -= 0.5
    src = np.asarray(points, dtype=np.float64).reshape(-1, 1, 2)
    if fisheye:
        d = np.asarray(distortion[:4], dtype=np.float64)
        newK = cv2.fisheye.estimateNewCameraMatrixForUndistortRectify(K, d, (w, h), np.eye(3), balance=0)
        return cv2.fisheye.undistortPoints(src, K, d, R=np.eye(3), P=newK).reshape(-1, 2)
    d = np.asarray(distortion, dtype=np.float64)
    d = np.array([d[0], d[1], d[4], d[5], d[2], d[3], 0, 0])
    if not np.any(d):
        return src.reshape(-1, 2)
    newK, roi = cv2.getOptimalNewCameraMatrix(K, d, (w, h), 0)
    out = cv2.undistortPoints(src, K, d, P=newK).reshape(-1, 2)
    return out - np.array([roi[0], roi[1]], dtype=np.float64)


def mask_source_from(mask_dir: Optional[Path], data_dir: Path) -> FolderMasks:
    """The folder mask source for a dataset (its own folder unless told otherwise)."""
    return FolderMasks(Path(mask_dir) if mask_dir is not None else Path(data_dir))
