"""Reading the dataset's images and matching maps to them: decoding, nearest resize, aspect check.

Masks, ground-truth masks and cached maps are accepted at the image's size or a uniform rescale
of it (`same_aspect`), and resized nearest (`resize_nearest`) so that instance ids never blend.
An image that cannot be decoded is named with the fix (`ImageReadError`); a loop over many
images reports every bad one at the end (`InputFilesError`), so that one bad file costs one
rerun of what is missing rather than the whole run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, List, Sequence, Tuple

import numpy as np

ASPECT_TOLERANCE = 0.02
"""Relative difference of the two scale factors up to which a map counts as a uniform rescale."""


class ImageReadError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, not an image)."""


class InputFilesError(ValueError):
    """Some images (or their masks) could not be processed; `errors` holds one error per file.

    Raised after every other image was processed, so that one bad file costs one rerun of what
    is missing, not the whole job. `summary` is what the job did meanwhile (an extraction's summary), if given.
    """

    def __init__(self, message: str, errors: Sequence[Exception], summary=None):
        super().__init__(message)
        self.errors = list(errors)
        self.summary = summary


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
"""The image files a dataset folder, a mask folder for `select --masks` or a benchmark is read from."""


def load_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3] (alpha dropped; no EXIF rotation, like nerfstudio).

    Raises `ImageReadError` naming the file: PIL's own message for a truncated file does not.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _as_rgb8(im, path)
    except FileNotFoundError:  # names the file already, and is not a damaged one
        raise
    except ImageReadError:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(
            f"{path}: cannot read this image ({type(err).__name__}: {err}); the file is corrupt, truncated or not "
            "an image. Replace it with a good copy (or remove it from the dataset) and run the same command again."
        ) from err


def _as_rgb8(im, path: Path) -> np.ndarray:
    """RGB uint8 of any mode PIL reads; 16-bit grey scaled to 8 bits (PIL's own convert clips it at 255, a white
    frame); float and 32-bit images with values beyond 16 bits are refused rather than guessed."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        values = np.asarray(im, dtype=np.int64)
        if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
            raise ImageReadError(f"{path}: a {im.mode} image with values outside 0-65535 cannot be shown as 8-bit "
                                 "colour; save it as an 8-bit or 16-bit PNG.")
        grey = (values * 255 + 32767) // 65535
        return np.repeat(grey.astype(np.uint8)[..., None], 3, axis=-1)
    if im.mode == "F":
        raise ImageReadError(f"{path}: a floating-point image has no one way to become colour; save it as an 8-bit "
                             "or 16-bit PNG.")
    return np.asarray(im.convert("RGB"))


def binary_mask(im) -> np.ndarray:
    """bool [H, W] of a mask image: > 127 in grey, or in the alpha channel when the colour is the same everywhere
    and only alpha varies (a cut-out saved as RGBA)."""
    if "A" in im.getbands():
        alpha = np.asarray(im.getchannel("A"))
        colour = np.asarray(im.convert("RGB"))
        if (colour == colour.reshape(-1, 3)[0]).all() and alpha.min() != alpha.max():
            return alpha > 127
    return np.asarray(im.convert("L")) > 127


def check_images_readable(image_paths: Iterable[Path]) -> None:
    """Decode every image; `InputFilesError` listing each one that fails (for a loader whose own
    error does not say which file was bad)."""
    errors: List[Exception] = []
    for path in image_paths:
        try:
            load_image(Path(path))
        except ImageReadError as err:
            errors.append(err)
    if errors:
        raise InputFilesError(list_errors(f"{count(errors, 'image')} cannot be read", errors), errors)


def same_aspect(map_hw: Tuple[int, int], image_hw: Tuple[int, int]) -> bool:
    """Whether a map of `map_hw` is a uniform rescale of an image of `image_hw` (within 2%)."""
    sy, sx = map_hw[0] / image_hw[0], map_hw[1] / image_hw[1]
    return abs(sy - sx) <= ASPECT_TOLERANCE * max(sy, sx)


def resize_nearest(ids: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an id map (sampled at pixel centres), never blending ids."""
    h, w = hw
    rows = np.minimum(((np.arange(h) + 0.5) * ids.shape[0] / h).astype(np.int64), ids.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * ids.shape[1] / w).astype(np.int64), ids.shape[1] - 1)
    return ids[rows[:, None], cols[None, :]]


def count(items: Sequence[Any], noun: str) -> str:
    """"1 image", "3 images"."""
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def list_errors(heading: str, errors: Sequence[Exception]) -> str:
    """`heading`, then one line per error (the first ten)."""
    lines = [str(err) for err in errors[:10]] + ([f"... and {len(errors) - 10} more"] if len(errors) > 10 else [])
    return heading + ":\n  " + "\n  ".join(lines)


def names_image(wanted: Path, path: Path) -> bool:
    """Does `wanted` (a file name, a stem, or a trailing part of a path such as `test/r_0.png`) name
    the image at `path`? A folder in the name tells apart equal names in different folders."""
    wanted, path = Path(wanted), Path(path)
    if len(wanted.parts) > 1:
        tail = path.parts[-len(wanted.parts) :]
        return tuple(tail[:-1]) == wanted.parts[:-1] and wanted.name in (tail[-1], Path(tail[-1]).stem)
    return wanted.name in (path.name, path.stem)
