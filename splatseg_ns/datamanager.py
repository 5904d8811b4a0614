"""Full-image datamanager that hands each training image over with its two-level instance masks.

Glue only: masks come from the user's folder (`core.extract.masks`) or from SAM through the per-image
cache (`core.extract.cache`, filled on first use by `core.extract.extraction` or ahead by `splatseg masks`), are
resized nearest to the image and follow it through nerfstudio's undistortion, and ride along in
the cached batch as `coarse_mask` / `fine_mask` [H, W] tensors (int16 where the ids fit, else
int32: masks are most of the cached batch's memory). When asked, CLIP embeddings of every mask
(`clip_<level>_ids` / `clip_<level>_emb`, for text queries) and DINO feature maps (`dino`,
[h, w, k] at patch resolution, for distillation) ride along too.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.datasets.base_dataset import InputDataset
from rich.progress import track

from splatseg_ns.core.configs import LoadsOlderConfigs
from splatseg_ns.core.extract import extractors
from splatseg_ns.core.extract.cache import CachedMasks, FeatureCache
from splatseg_ns.core.extract.clip_embeddings import ClipConfig
from splatseg_ns.core.extract.dino_features import DinoConfig
from splatseg_ns.core.extract.extraction import extract_all
from splatseg_ns.core.extract.masks import MaskError, mask_source_from, undistort_instance_map
from splatseg_ns.core.extract.sam_masks import SamMaskConfig
from splatseg_ns.core.io.images import check_images_readable
from splatseg_ns.nerfstudio_compat import image_cache_device


@dataclass
class SplatsegDataManagerConfig(LoadsOlderConfigs, FullImageDatamanagerConfig):
    """Full images plus coarse/fine instance masks per training image."""

    _target: Type = field(default_factory=lambda: SplatsegDataManager)
    mask_source: Literal["auto", "folder", "sam"] = "auto"
    """Where the two-level masks come from: 'folder' (coarse/ and fine/ PNGs you bring), 'sam' (SAM's automatic
    masks, computed once and cached), 'auto' (the folder when it exists, else SAM)."""
    mask_dir: Optional[Path] = None
    """Folder that holds coarse/ and fine/ instance-id PNGs named like the images (default: the --data folder)."""
    cache_dir: Optional[Path] = None
    """Where SAM masks, CLIP embeddings and DINO features are cached (default: DATA/splatseg_cache)."""
    sam: SamMaskConfig = field(default_factory=SamMaskConfig)
    """SAM model and automatic mask generator settings (mask source 'sam')."""
    text_queries: bool = False
    """Embed every mask with CLIP, so that segments can be selected by name (splatseg select --text)."""
    clip_config: ClipConfig = field(default_factory=ClipConfig)
    """CLIP model for the mask embeddings (with --pipeline.datamanager.text-queries)."""
    dino: bool = False
    """Extract DINO feature maps to distil into the Gaussians (segment-everything by DINO + position)."""
    dino_config: DinoConfig = field(default_factory=DinoConfig)
    """DINO model, resolution and PCA size (with --pipeline.datamanager.dino)."""


def lens_distortion(camera: Cameras) -> Optional[Tuple[np.ndarray, np.ndarray, bool]]:
    """(K, distortion, fisheye) of a camera [1] with lens distortion, as the mask/pixel undistortion in
    `core.extract.masks` takes them; None for a pinhole camera."""
    params = camera.distortion_params
    if params is None or not torch.any(params != 0):
        return None
    camera_type = CameraType(int(camera.camera_type.reshape(-1)[0].item()))
    if camera_type not in (CameraType.PERSPECTIVE, CameraType.FISHEYE):
        raise MaskError(f"Undistorting masks or pixels of {camera_type.name} cameras is not supported.")
    K = camera.get_intrinsics_matrices().reshape(3, 3).cpu().numpy()
    return K, params.reshape(-1).cpu().numpy(), camera_type == CameraType.FISHEYE


class SplatsegDataManager(FullImageDatamanager[InputDataset]):
    """Caches training images with their masks; everything else is nerfstudio's FullImageDatamanager."""

    config: SplatsegDataManagerConfig

    def __init__(self, *args, **kwargs):
        self.cameras_before_undistortion: Dict[str, Cameras] = {}
        """Per split, the cameras as the dataparser gave them: pixels of the image files (clicks, ground-truth
        masks) map into the undistorted views through them."""
        super().__init__(*args, **kwargs)

    def _load_images(
        self, split: Literal["train", "eval"], cache_images_device: Literal["cpu", "gpu"]
    ) -> List[Dict[str, torch.Tensor]]:
        dataset = self.train_dataset if split == "train" else self.eval_dataset
        cameras_before_undistortion = deepcopy(dataset.cameras)  # the parent rewrites intrinsics in place
        self.cameras_before_undistortion[split] = cameras_before_undistortion
        try:
            cached = super()._load_images(split, image_cache_device(cache_images_device))
        except (OSError, ValueError, SyntaxError):  # nerfstudio's loader does not say which image it could not read
            check_images_readable(dataset.image_filenames)  # names every unreadable image, with the fix
            raise
        if split == "train":
            self._attach_masks(dataset, cameras_before_undistortion, cached)
        return cached

    def _data_dir(self) -> Path:
        data = Path(self.config.dataparser.data)
        return data.parent if data.is_file() else data  # some parsers take transforms.json itself

    def _mask_source(self, image_paths: List[Path]):
        """FolderMasks or CachedMasks, with every extraction this run needs done (progress bars, resumable)."""
        data_dir = self._data_dir()
        folder = mask_source_from(self.config.mask_dir, data_dir)
        use_folder = self.config.mask_source == "folder" or (
            self.config.mask_source == "auto" and (folder.root / "coarse").is_dir()
        )
        needed = []
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if not use_folder or self.config.text_queries:  # CLIP embeds the cached masks
            bad = [] if use_folder else self.config.sam.problems("--pipeline.datamanager.sam.")
            if bad:
                raise ValueError("; ".join(bad))
            needed.append(
                extractors.folder_extractor(folder.root) if use_folder
                else extractors.sam_extractor(self.config.sam, device)
            )
            if self.config.text_queries:
                needed.append(extractors.clip_extractor(self.config.clip_config, device))
        if self.config.dino:
            needed.append(extractors.dino_extractor(self.config.dino_config, device))
        self.feature_cache = FeatureCache(data_dir, self.config.cache_dir)
        if needed:
            extract_all(image_paths, needed, self.feature_cache)
        return folder if use_folder else CachedMasks(self.feature_cache)

    def _attach_masks(self, dataset: InputDataset, cameras, cached: List[Dict[str, torch.Tensor]]) -> None:
        source = self._mask_source([Path(p) for p in dataset.image_filenames])
        source.check()
        device = self.device if cached and cached[0]["image"].device.type != "cpu" else "cpu"
        for idx in track(range(len(cached)), description="Loading instance masks", transient=True):
            camera = cameras[idx]
            height, width = int(camera.height.item()), int(camera.width.item())
            coarse, fine = source.load(dataset.image_filenames[idx], (height, width))
            lens = lens_distortion(camera)
            if lens is not None:
                coarse, fine = (undistort_instance_map(m, *lens) for m in (coarse, fine))
            image_hw = tuple(cached[idx]["image"].shape[:2])
            if coarse.shape != image_hw:
                raise MaskError(f"Masks of {dataset.image_filenames[idx]} undistorted to {coarse.shape}, image to {image_hw}.")
            # int16 where the ids allow: masks are most of the cached batch's memory (int32: 8 bytes a pixel)
            dtype = np.int16 if max(int(coarse.max(initial=0)), int(fine.max(initial=0))) <= np.iinfo(np.int16).max else np.int32
            cached[idx]["coarse_mask"] = torch.from_numpy(coarse.astype(dtype)).to(device)
            cached[idx]["fine_mask"] = torch.from_numpy(fine.astype(dtype)).to(device)
            image_path = Path(dataset.image_filenames[idx])
            if self.config.text_queries:
                for level, (ids, emb) in self.feature_cache.load_clip(image_path).items():
                    cached[idx][f"clip_{level}_ids"] = torch.from_numpy(ids).long()
                    cached[idx][f"clip_{level}_emb"] = torch.from_numpy(emb)
            if self.config.dino:
                cached[idx]["dino"] = torch.from_numpy(self.feature_cache.load_dino(image_path).astype("float32"))
