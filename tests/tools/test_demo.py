"""`splatseg demo`'s showcase on a real trained demo run."""

from __future__ import annotations

import numpy as np

from splatseg_ns.core.io.ply import read_gaussians_ply
from splatseg_ns.core.io.selection_file import read_selection


def test_demo_showcase_selects_exports_and_draws(trained_demo_run, demo_scene, tmp_path):
    from PIL import Image

    from splatseg_ns.tools.demo import showcase_selection

    paths = showcase_selection(trained_demo_run, demo_scene, tmp_path / "show")
    assert read_selection(paths["selection"]).indices
    assert len(read_gaussians_ply(paths["object"])["x"]) > 0
    with Image.open(paths["picture"]) as picture:
        strip = np.asarray(picture.convert("RGB"))
    quarter = strip.shape[1] // 4
    alone = strip[:, 3 * quarter :]
    assert (alone < 250).any() and (alone >= 250).mean() > 0.5  # the object, on white
