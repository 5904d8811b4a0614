"""A real `ns-train splatseg` on the demo scene (CPU): colour, then features that separate objects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from splatseg_ns.core.masks import FolderMasks


def mask_feature_stats(features: torch.Tensor, ids: torch.Tensor):
    """Mean cosine of pixels to their own mask's mean feature, and mean cosine between mask means."""
    f = F.normalize(features, dim=-1)
    means = {int(k): F.normalize(f[ids == k].mean(0), dim=0) for k in ids.unique() if k > 0 and (ids == k).sum() > 5}
    within = [float((f[ids == k] @ m).mean()) for k, m in means.items()]
    keys = sorted(means)
    between = [float(means[a] @ means[b]) for a in keys for b in keys if a < b]
    return within, between


def test_trained_run_loads_and_features_separate_objects(trained_demo_run: Path):
    from nerfstudio.utils.eval_utils import eval_setup

    # Loading goes through torch.load with weights_only=True (torch>=2.6): it must just work.
    _, pipeline, checkpoint, step = eval_setup(trained_demo_run, test_mode="test")
    model = pipeline.model
    assert step == 399 and checkpoint.exists()
    assert model.seg_features.shape == (model.num_points, 24)
    assert torch.isfinite(model.seg_features).all()
    # GFL ran: the checkpoint holds global candidates, about one per object (4) at the coarse level
    assert 2 <= model.candidate_centers_coarse.shape[0] <= 8, model.candidate_centers_coarse.shape
    assert model.candidate_centers_fine.shape[0] >= model.candidate_centers_coarse.shape[0]

    dataset = pipeline.datamanager.train_dataset
    masks = FolderMasks(Path(pipeline.datamanager.config.data))
    coarse_within, coarse_between, fine_within, fine_between, psnrs = [], [], [], [], []
    for i in range(0, len(dataset), 3):
        outputs = model.get_outputs_for_camera(dataset.cameras[i : i + 1])
        features = outputs["seg_features"]
        coarse, fine = (torch.from_numpy(m) for m in masks.load(dataset.image_filenames[i], features.shape[:2]))
        w, b = mask_feature_stats(features[..., :12], coarse)
        coarse_within += w
        coarse_between += b
        w, b = mask_feature_stats(features, fine)
        fine_within += w
        fine_between += b
        image = torch.from_numpy(dataset.get_numpy_image(i)[..., :3].astype(np.float32) / 255)
        psnrs.append(float(-10 * torch.log10(((outputs["rgb"] - image) ** 2).mean())))

    assert np.mean(psnrs) > 20, f"colour stage did not fit the scene (PSNR {np.mean(psnrs):.1f})"
    # Features of one object agree; different objects are measurably apart.
    assert np.mean(coarse_within) > 0.8, coarse_within
    assert np.mean(coarse_between) < np.mean(coarse_within) - 0.4, (coarse_within, coarse_between)
    assert np.mean(fine_between) < np.mean(fine_within) - 0.2, (fine_within, fine_between)


def test_ns_export_loads_the_run_with_modern_torch(trained_demo_run: Path, tmp_path):
    """nerfstudio's own exporter (torch.load with weights_only) reads a splatseg run, no env vars needed."""
    import os
    import subprocess
    import sys

    from splatseg_ns.core.ply import read_gaussians_ply

    ns_export = Path(sys.executable).parent / "ns-export"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    result = subprocess.run(
        [str(ns_export), "gaussian-splat", "--load-config", str(trained_demo_run), "--output-dir", str(tmp_path)],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ply = read_gaussians_ply(tmp_path / "splat.ply")
    assert len(ply["x"]) > 1000 and "f_dc_0" in ply
