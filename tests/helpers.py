"""Small builders the tests share: images on disk, fake extractors, tiny splatseg models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from splatseg_ns.core.extract.cache import FeatureCache
from splatseg_ns.core.extract.extractors import Extractor

VIEW = "frame_00001.png"
"""The demo run's view that the tests click in and score."""


def features_with_nan(n: int = 100, bad=(3, 50), value=float("nan")) -> torch.Tensor:
    """[n, 24] unit features with `value` in channel 5 of Gaussians `bad`."""
    features = torch.nn.functional.normalize(torch.randn(n, 24, generator=torch.Generator().manual_seed(0)), dim=-1)
    features[list(bad), 5] = value
    return features


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


class Counting:
    """A fake masks extractor that counts its calls (coarse = bright pixels, fine = quadrants)."""

    def __init__(self, threshold=128, product="masks"):
        self.calls = []
        self.threshold = threshold
        self.product = product

    def compute(self, image):
        self.calls.append(image.shape)
        coarse = (image.mean(-1) > self.threshold).astype(np.uint16)
        h, w = coarse.shape
        fine = coarse * (1 + (np.arange(h)[:, None] >= h // 2) + 2 * (np.arange(w)[None] >= w // 2)).astype(np.uint16)
        return {"coarse": coarse, "fine": fine}

    def extractor(self):
        return Extractor(self.product, "fake", {"threshold": self.threshold}, self.compute)


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


def make_model(num_points: int = 64, num_train_data: int = 4, **overrides):
    """A SplatsegModel of `num_points` random seed points in [-1, 1]^3 (config fields as `overrides`)."""
    from nerfstudio.data.scene_box import SceneBox

    from splatseg_ns.model import SplatsegModelConfig

    generator = torch.Generator().manual_seed(0)
    points = torch.rand(num_points, 3, generator=generator) * 2 - 1
    colours = torch.randint(0, 256, (num_points, 3), generator=generator, dtype=torch.uint8)
    config = SplatsegModelConfig(**overrides)
    return config.setup(scene_box=SceneBox(aabb=torch.tensor([[-1.0] * 3, [1.0] * 3])),
                        num_train_data=num_train_data, seed_points=(points, colours))


def make_feature_stage_model(num_points: int = 40):
    """A model already in its feature stage (step 0 onwards)."""
    return make_model(num_points, num_train_data=2, feature_stage_start=0)


def save_mask(path: Path, ids: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(ids).save(path)
    return path


def write_folder_masks(root: Path, images, skip=()):
    for k, image in enumerate(images):
        if k in skip:
            continue
        ids = np.full((12, 16), k + 1, np.uint8)
        for level in ("coarse", "fine"):
            save_mask(root / level / f"{image.stem}.png", ids)


def hits(cache: FeatureCache, product: str, images) -> list:
    return [cache.lookup(product, p).hit for p in images]


# --------------------------------------------------------------------------- #
def _rotation(axis_angle: torch.Tensor) -> torch.Tensor:
    theta = axis_angle.norm()
    k = axis_angle / theta
    Kx = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], dtype=axis_angle.dtype)
    return torch.eye(3, dtype=axis_angle.dtype) + torch.sin(theta) * Kx + (1 - torch.cos(theta)) * Kx @ Kx


def make_scene(N, W, H, C=1, seed=0, dtype=torch.float64, sh_degree=None, D=3, per_view_colors=False):
    """`rasterize` arguments: Gaussians in front of (mostly) the first camera, with a few behind it,
    too near, off-screen, very opaque (alpha clamp, early termination) and large."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    f = 1.1 * W
    Ks = torch.tensor([[f, 0, 0.47 * W], [0, 1.05 * f, 0.52 * H], [0, 0, 1]], dtype=dtype).repeat(C, 1, 1)
    z = 1.5 + 4.5 * rnd(N)
    u = -0.2 * W + 1.4 * W * rnd(N)
    v = -0.2 * H + 1.4 * H * rnd(N)
    means = torch.stack([(u - 0.47 * W) / f * z, (v - 0.52 * H) / (1.05 * f) * z, z], -1)
    if N >= 8:
        means[0, 2] = -1.0  # behind the camera
        means[1, 2] = 0.005  # inside the near plane
        means[2, :2] = torch.tensor([40.0, 0.0], dtype=dtype)  # far off-screen
    quats = torch.randn(N, 4, generator=g, dtype=dtype)
    scales = torch.exp(math.log(0.004) + math.log(60.0) * rnd(N, 3)) * z[:, None] / 3
    opacities = 0.05 + 0.95 * rnd(N)
    opacities[rnd(N) < 0.2] = 0.99995
    viewmats = torch.eye(4, dtype=dtype).repeat(C, 1, 1)
    for c in range(1, C):
        viewmats[c, :3, :3] = _rotation(0.08 * torch.randn(3, generator=g, dtype=dtype))
        viewmats[c, :3, 3] = 0.2 * torch.randn(3, generator=g, dtype=dtype)
    if N >= 50:  # a few large, nearly opaque "walls": alpha clamp and early termination
        walls = torch.arange(3, 7)
        means[walls] = torch.tensor([[0.05, -0.02, 2.0], [-0.1, 0.06, 2.5], [0.02, 0.1, 3.0], [0.0, 0.0, 3.5]],
                                    dtype=dtype)
        scales[walls] = 0.35 * means[walls, 2:] * (1 + 0.3 * rnd(4, 3))
        opacities[walls] = 0.99995
        # large Gaussians centred just off-screen: visible through the Jacobian clamp
        for i, (uu, vv, zz) in zip((7, 8), ((1.45 * W, 0.3 * H, 2.0), (0.5 * W, -0.6 * H, 2.5))):
            means[i] = torch.tensor([(uu - 0.47 * W) / f * zz, (vv - 0.52 * H) / (1.05 * f) * zz, zz], dtype=dtype)
        scales[7:9] = 0.5
    lead = (C, N) if per_view_colors else (N,)
    if sh_degree is None:
        colors = rnd(*lead, D)
    else:
        colors = 0.4 * torch.randn(*lead, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype)
    return dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                viewmats=viewmats, Ks=Ks, width=W, height=H)
