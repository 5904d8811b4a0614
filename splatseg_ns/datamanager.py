"""Full-image datamanager that hands each training image over with its two-level instance masks.

Glue only: masks come from a mask source (`core.masks`), are resized nearest to the image and
follow it through nerfstudio's undistortion, and ride along in the cached batch as
`coarse_mask` / `fine_mask` int32 [H, W] tensors.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Type

import torch
from rich.progress import track

from nerfstudio.cameras.cameras import CameraType
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset

from splatseg_ns.core.masks import MaskError, mask_source_from, undistort_instance_map


@dataclass
class SplatsegDataManagerConfig(FullImageDatamanagerConfig):
    """Full images plus coarse/fine instance masks per training image."""

    _target: Type = field(default_factory=lambda: SplatsegDataManager)
    mask_dir: Optional[Path] = None
    """Folder that holds coarse/ and fine/ instance-id PNGs named like the images (default: the --data folder)."""


class SplatsegDataManager(FullImageDatamanager[InputDataset]):
    """Caches training images with their masks; everything else is nerfstudio's FullImageDatamanager."""

    config: SplatsegDataManagerConfig

    def _load_images(
        self, split: Literal["train", "eval"], cache_images_device: Literal["cpu", "gpu"]
    ) -> List[Dict[str, torch.Tensor]]:
        dataset = self.train_dataset if split == "train" else self.eval_dataset
        cameras_before_undistortion = deepcopy(dataset.cameras)  # the parent rewrites intrinsics in place
        if cache_images_device == "cpu" and not torch.cuda.is_available():
            # "cpu" caching pins memory, which needs an accelerator; "gpu" caching moves to self.device (the CPU).
            cache_images_device = "gpu"
        cached = super()._load_images(split, cache_images_device)
        if split == "train":
            self._attach_masks(dataset, cameras_before_undistortion, cached)
        return cached

    def _attach_masks(self, dataset: InputDataset, cameras, cached: List[Dict[str, torch.Tensor]]) -> None:
        source = mask_source_from(self.config.mask_dir, Path(self.config.dataparser.data))
        source.check()
        device = self.device if cached and cached[0]["image"].device.type != "cpu" else "cpu"
        for idx in track(range(len(cached)), description="Loading instance masks", transient=True):
            camera = cameras[idx]
            height, width = int(camera.height.item()), int(camera.width.item())
            coarse, fine = source.load(dataset.image_filenames[idx], (height, width))
            distortion = camera.distortion_params
            if distortion is not None and torch.any(distortion != 0):
                camera_type = CameraType(int(camera.camera_type.item()))
                if camera_type not in (CameraType.PERSPECTIVE, CameraType.FISHEYE):
                    raise MaskError(f"Undistorting masks for {camera_type.name} cameras is not supported.")
                K = camera.get_intrinsics_matrices().numpy()
                fisheye = camera_type == CameraType.FISHEYE
                coarse, fine = (undistort_instance_map(m, K, distortion.numpy(), fisheye) for m in (coarse, fine))
            image_hw = tuple(cached[idx]["image"].shape[:2])
            if coarse.shape != image_hw:
                raise MaskError(f"Masks of {dataset.image_filenames[idx]} undistorted to {coarse.shape}, image to {image_hw}.")
            cached[idx]["coarse_mask"] = torch.from_numpy(coarse).to(device)
            cached[idx]["fine_mask"] = torch.from_numpy(fine).to(device)
