"""The objects of the prompt view of the trained demo run (tests/conftest.py's `run`) that the tools' tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from splatseg_ns.tools.make_benchmark import deepest_pixel, object_masks
from tests.helpers import VIEW


@pytest.fixture(scope="session")
def objects(demo_scene: Path):
    """name -> (click pixel, mask) of each object in the prompt view."""
    masks = object_masks(demo_scene, demo_scene / "images" / VIEW, "coarse")
    return {name: (deepest_pixel(mask), mask) for name, mask in masks.items() if mask.sum() > 20}
