"""Reading the dataset's images: an unreadable one is named with the fix, all of them at once."""

from __future__ import annotations

import re

import pytest

from splatseg_ns.core.io.images import ImageReadError, InputFilesError, check_images_readable, load_image
from tests.helpers import truncate, write_images


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


def test_images_the_training_loader_cannot_read_are_listed(dataset):
    """`check_images_readable` names the files when nerfstudio's loader says only 'image file is truncated'."""
    _, images = dataset
    check_images_readable(images)
    truncate(images[2])
    with pytest.raises(InputFilesError, match=rf"^1 image cannot be read:\n  {re.escape(str(images[2]))}: cannot read"):
        check_images_readable(images)
