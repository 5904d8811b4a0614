"""The trained demo run the tools' tests share, opened once, and the objects of its prompt view."""

from __future__ import annotations

from pathlib import Path

import pytest

from splatseg_ns.tools.make_benchmark import deepest_pixel, object_masks
from splatseg_ns.trained_run import TrainedRun

VIEW = "frame_00001.png"


@pytest.fixture(scope="session")
def run(trained_demo_run: Path) -> TrainedRun:
    return TrainedRun(trained_demo_run)


@pytest.fixture(scope="session")
def objects(demo_scene: Path):
    """name -> (click pixel, mask) of each object in the prompt view."""
    masks = object_masks(demo_scene, demo_scene / "images" / VIEW, "coarse")
    return {name: (deepest_pixel(mask), mask) for name, mask in masks.items() if mask.sum() > 20}
