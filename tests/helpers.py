"""Small builders the tests share: images on disk, fake extractors, tiny splatseg models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from splatseg_ns.core.cache import FeatureCache
from splatseg_ns.core.extractors import Extractor


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
