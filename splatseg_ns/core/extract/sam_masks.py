"""Two-level instance masks (coarse = whole objects, fine = parts) from SAM's automatic masks.

Click-Gaussian (arXiv 2407.11793) builds its two mask levels from SAM's "segment everything"
output: the masks are sorted by area; where masks overlap, the coarse map keeps the larger
segment and the fine map the smaller one. `two_level_maps` is that construction (pure numpy);
`SamMasks` runs SAM's automatic mask generator on an image and returns the two maps, so it is a
drop-in mask source beside `masks.FolderMasks` (same int32 [H, W] maps, 0 = no mask).

Relies on segment-anything 1.0 (which imports torchvision for `batched_nms`; on CPU-only
machines `splatseg_ns._torchvision_cpu` makes that import work). Checkpoints come from a local
path or are downloaded once into the weights folder (`weights.weights_dir()`); offline without one
the error names the file, where to put it and the flag to pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np

from splatseg_ns.core.io.images import resize_nearest
from splatseg_ns.core.io.weights import WeightsError, read_state_dict, resolve_checkpoint

# Official checkpoints (segment-anything README).
SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
# Image-encoder width of each SAM variant: how a checkpoint gives its model type away.
_ENCODER_WIDTH = {1280: "vit_h", 1024: "vit_l", 768: "vit_b"}

# Prefix of the command-line flags that set `SamMaskConfig` fields (the CLI nests it as `sam`).
FLAG_PREFIX = "--[pipeline.datamanager.]sam."  # splatseg masks / ns-train


# ----------------------------------------------------------------------------------------------
# The two-level construction
# ----------------------------------------------------------------------------------------------


def two_level_maps(
    masks: Union[np.ndarray, Sequence[np.ndarray]],
    scores: Optional[Sequence[float]] = None,
    min_area: int = 0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Coarse and fine instance maps from overlapping binary masks (Click-Gaussian, Sec. 3.2).

    Masks are ordered by area. The coarse map is painted smallest first so that larger masks
    cover smaller ones (a pixel belongs to the largest mask containing it: the whole object);
    the fine map largest first so that smaller masks win (the smallest mask: the part).

    Args:
        masks: N boolean masks [H, W] (a list or an [N, H, W] array), e.g. SAM's
            `segmentation` outputs.
        scores: optional per-mask quality (SAM's predicted IoU); only breaks ties between masks
            of equal area (the better mask wins, in both maps).
        min_area: masks with fewer pixels are dropped first.

    Returns:
        (coarse, fine), int32 [H, W] each; 0 = no mask. Each map numbers the segments visible
        in it 1..M without gaps, ordered by the area of their mask, largest first (ties: better
        score, then input order), so the same masks always give the same ids.
    """
    if isinstance(masks, np.ndarray) and masks.ndim == 3:
        stack = masks.astype(bool, copy=False)
    else:
        masks = list(masks)
        if not masks:
            raise ValueError("two_level_maps needs at least one mask to know the image size; got none")
        stack = np.stack([np.asarray(m, dtype=bool) for m in masks])
    n, h, w = stack.shape
    if n == 0:
        return np.zeros((h, w), np.int32), np.zeros((h, w), np.int32)
    areas = stack.reshape(n, -1).sum(axis=1)
    quality = np.zeros(n) if scores is None else np.asarray(scores, dtype=np.float64)
    if quality.shape != (n,):
        raise ValueError(f"got {n} masks but {quality.shape} scores")

    keep = np.flatnonzero(areas >= max(min_area, 1))
    # Rank 1 = largest; lexsort's last key is the primary one.
    order = keep[np.lexsort((keep, -quality[keep], -areas[keep]))]
    # Painting is one boolean assignment per mask: O(N * H * W) like an argmax over the stack,
    # without an [N, H, W] temporary.
    coarse = np.zeros((h, w), np.int32)
    for rank in range(len(order), 0, -1):  # smallest first; larger ones paint over
        coarse[stack[order[rank - 1]]] = rank
    fine = np.zeros((h, w), np.int32)
    for rank in range(1, len(order) + 1):  # largest first; smaller ones paint over
        fine[stack[order[rank - 1]]] = rank
    return _renumber(coarse), _renumber(fine)


def _renumber(ids: np.ndarray) -> np.ndarray:
    """Map the ids present (keeping their order) to 1..M, 0 staying 0."""
    present, inverse = np.unique(ids, return_inverse=True)
    offset = 0 if present[0] == 0 else 1
    return (inverse.reshape(ids.shape) + offset).astype(np.int32)


# ----------------------------------------------------------------------------------------------
# SAM
# ----------------------------------------------------------------------------------------------


@dataclass
class SamMaskConfig:
    """SAM's automatic mask generator, as the two-level mask source.

    Defaults are segment-anything's own `SamAutomaticMaskGenerator` defaults with the ViT-H
    model: the setting SAGA uses (Jumpat/SegAnyGAussians, extract_segment_everything_masks.py:
    vit_h, pred_iou_thresh 0.88, stability_score_thresh 0.95, min_mask_region_area 0) and, up to
    the two thresholds, GARField's paper setting (chungmin99/garfield, img_group_model.py:
    vit_h, points_per_side 32, pred_iou_thresh 0.90, stability_score_thresh 0.90).
    Click-Gaussian does not publish its generator settings.
    """

    model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    """SAM backbone. vit_h is what SAGA and GARField use; vit_b is ~4x faster and somewhat coarser."""
    checkpoint: Optional[Path] = None
    """Local SAM checkpoint (.pth). None: the official file for `model_type`, downloaded once into
    $SPLATSEG_CACHE (default ~/.cache/splatseg/)."""
    points_per_side: int = 32
    """Prompt grid is points_per_side^2 points over the image; more finds smaller parts, costs
    quadratically more decoder passes."""
    points_per_batch: int = 64
    """Prompts decoded at once; only memory/speed."""
    pred_iou_thresh: float = 0.88
    """Drop masks whose predicted IoU is below this (SAM default; GARField used 0.90)."""
    stability_score_thresh: float = 0.95
    """Drop masks that change a lot when the logit cut-off moves (SAM default; GARField 0.90)."""
    stability_score_offset: float = 1.0
    """How far the cut-off moves for the stability score."""
    box_nms_thresh: float = 0.7
    """Box IoU above which duplicate masks are suppressed."""
    crop_n_layers: int = 0
    """Run again on 2^(2i) crops per layer i (finds small objects in large images; ~5x slower at 1)."""
    crop_nms_thresh: float = 0.7
    """Box IoU for duplicates between crops."""
    crop_overlap_ratio: float = 512 / 1500
    """Overlap of neighbouring crops, as a fraction of the image side."""
    crop_n_points_downscale_factor: int = 1
    """Points per side in crop layer i are divided by this^i."""
    min_mask_region_area: int = 0
    """If > 0, remove islands and fill holes smaller than this many pixels in each mask (OpenCV)."""
    min_area: int = 0
    """Masks smaller than this many pixels (at the image's resolution) are left out of both levels."""
    max_side: Optional[int] = 1024
    """Images whose longer side exceeds this are shrunk before SAM and the maps scaled back (nearest).
    SAM's encoder sees 1024 px whatever the input, so larger inputs only cost memory and time."""

    def problems(self, prefix: str = "--sam.") -> List[str]:
        """Each setting out of its range, as '<flag> <value>: <range>' (`prefix` + the field's flag name): checked
        before any model loads, since SAM's generator fails late on some (a zero division) and silently drops
        every mask on others (a threshold above 1), which would be cached as valid."""
        ranges = [
            ("points_per_side", self.points_per_side >= 1, "at least 1"),
            ("points_per_batch", self.points_per_batch >= 1, "at least 1"),
            ("pred_iou_thresh", 0 <= self.pred_iou_thresh <= 1, "in [0, 1]"),
            ("stability_score_thresh", 0 <= self.stability_score_thresh <= 1, "in [0, 1]"),
            ("stability_score_offset", self.stability_score_offset > 0, "above 0"),
            ("box_nms_thresh", 0 < self.box_nms_thresh <= 1, "in (0, 1]"),
            ("crop_n_layers", self.crop_n_layers >= 0, "0 or more"),
            ("crop_nms_thresh", 0 < self.crop_nms_thresh <= 1, "in (0, 1]"),
            ("crop_overlap_ratio", 0 <= self.crop_overlap_ratio < 1, "in [0, 1)"),
            ("crop_n_points_downscale_factor", self.crop_n_points_downscale_factor >= 1, "at least 1"),
            ("min_mask_region_area", self.min_mask_region_area >= 0, "0 or more"),
            ("min_area", self.min_area >= 0, "0 or more"),
            ("max_side", self.max_side is None or self.max_side >= 32, "None or at least 32 pixels"),
        ]
        return [f"{prefix}{name.replace('_', '-')} {getattr(self, name)}: must be {allowed}"
                for name, ok, allowed in ranges if not ok]

    def settings(self) -> Dict[str, Any]:
        """What determines the output: recorded in the cache so that a change recomputes masks.

        The checkpoint is identified by its file name (official names carry a hash prefix)."""
        fields = {k: v for k, v in vars(self).items() if k != "checkpoint"}
        name = Path(self.checkpoint).name if self.checkpoint else Path(SAM_CHECKPOINT_URLS[self.model_type]).name
        return {**fields, "checkpoint": name}


def load_sam(config: SamMaskConfig, device: Union[str, "torch.device"] = "cpu"):  # noqa: F821
    """The segment_anything `Sam` model for `config`, weights loaded, in eval mode on `device`.

    The checkpoint is `config.checkpoint` or the official file (downloaded into the weights
    folder when missing). Raises `WeightsError` naming the file, the folder and the flag when
    the file cannot be had, and the right `model_type` when the checkpoint is for another one.
    """
    import torch
    from segment_anything import sam_model_registry

    if config.model_type not in SAM_CHECKPOINT_URLS:
        raise WeightsError(f"unknown SAM model type {config.model_type!r}; use one of {sorted(SAM_CHECKPOINT_URLS)}")
    path = resolve_checkpoint(
        config.checkpoint,
        SAM_CHECKPOINT_URLS[config.model_type],
        what=f"SAM {config.model_type}",
        flag=f"{FLAG_PREFIX}checkpoint",
    )
    state_dict = read_state_dict(path)
    width = state_dict.get("image_encoder.pos_embed", torch.zeros(0)).shape[-1:]
    found = _ENCODER_WIDTH.get(int(width[0])) if len(width) else None
    if found is None and not any(k.startswith("image_encoder.") for k in state_dict):
        raise WeightsError(f"{path}: not a SAM checkpoint (no image_encoder weights in it).")
    if found is not None and found != config.model_type:
        raise WeightsError(
            f"{path}: this looks like a {found} checkpoint; pass {FLAG_PREFIX}model-type {found} "
            f"(model type {config.model_type} was asked for)."
        )
    model = sam_model_registry[config.model_type]()
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as err:  # size mismatch / missing keys
        hint = f"this looks like a {found} checkpoint; pass {FLAG_PREFIX}model-type {found}" if found else (
            "it does not match any SAM model type (vit_h, vit_l, vit_b)"
        )
        raise WeightsError(f"{path}: cannot load into SAM {config.model_type}: {hint}. ({str(err)[:300]})") from err
    return model.to(device).eval()


class SamMasks:
    """SAM as a mask source: `SamMasks(config)(image uint8 [H, W, 3] RGB) -> (coarse, fine)`.

    The model is loaded on first use (so a fully cached run never loads it); pass `model` to use
    one already built (e.g. `testing.tiny_models.build_tiny_sam()` in tests).
    """

    def __init__(self, config: Optional[SamMaskConfig] = None, device: str = "cpu", model=None):
        self.config = config or SamMaskConfig()
        self.device = device
        self._model = model
        self._generator = None

    @property
    def settings(self) -> Dict[str, Any]:
        return self.config.settings()

    def generator(self):
        """The segment_anything `SamAutomaticMaskGenerator` (built on first call)."""
        if self._generator is None:
            from segment_anything import SamAutomaticMaskGenerator

            if self._model is None:
                self._model = load_sam(self.config, self.device)
            c = self.config
            self._generator = SamAutomaticMaskGenerator(
                self._model,
                points_per_side=c.points_per_side,
                points_per_batch=c.points_per_batch,
                pred_iou_thresh=c.pred_iou_thresh,
                stability_score_thresh=c.stability_score_thresh,
                stability_score_offset=c.stability_score_offset,
                box_nms_thresh=c.box_nms_thresh,
                crop_n_layers=c.crop_n_layers,
                crop_nms_thresh=c.crop_nms_thresh,
                crop_overlap_ratio=c.crop_overlap_ratio,
                crop_n_points_downscale_factor=c.crop_n_points_downscale_factor,
                min_mask_region_area=c.min_mask_region_area,
            )
        return self._generator

    def raw_masks(self, image: np.ndarray) -> List[Dict[str, Any]]:
        """SAM's automatic masks for `image` (at most `max_side` px), as segment_anything returns them."""
        return self.generator().generate(_check_image(image))

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        image = _check_image(image)
        h, w = image.shape[:2]
        small = _shrink(image, self.config.max_side)
        records = self.raw_masks(small)
        scale = (h * w) / (small.shape[0] * small.shape[1])
        if not records:
            return np.zeros((h, w), np.int32), np.zeros((h, w), np.int32)
        coarse, fine = two_level_maps(
            [r["segmentation"] for r in records],
            scores=[r["predicted_iou"] for r in records],
            min_area=int(np.ceil(self.config.min_area / scale)),
        )
        if small.shape[:2] != (h, w):
            coarse, fine = resize_nearest(coarse, (h, w)), resize_nearest(fine, (h, w))
        return coarse, fine


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an RGB image uint8 [H, W, 3], got {image.dtype} {image.shape}")
    return image


def _shrink(image: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    h, w = image.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return image
    from PIL import Image

    s = max_side / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))

