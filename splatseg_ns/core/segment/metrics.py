"""Mask metrics for `splatseg eval`: IoU, pixel accuracy, boundary IoU, precision and recall, and their means.

The benchmarks Click-Gaussian reports (LERF-Mask, SPIn-NeRF) score mIoU and mAcc; boundary IoU
(Cheng et al., "Boundary IoU", CVPR 2021) is added because IoU of large objects hardly moves when
their edges are wrong, and clean edges are what an exported object is judged by.
Empty masks: a prediction of nothing where the ground truth is empty is right (1.0 for every
metric); nothing against something, or something against nothing, scores 0 IoU.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np
from scipy.ndimage import distance_transform_cdt


def iou(pred, gt) -> float:
    """|pred & gt| / |pred | gt| of two bool [H, W] masks; 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def accuracy(pred, gt) -> float:
    """Fraction of pixels where pred and gt agree."""
    pred, gt = _pair(pred, gt)
    return 1.0 if gt.size == 0 else np.count_nonzero(pred == gt) / gt.size


def mask_boundary(mask, dilation_ratio: float = 0.02) -> np.ndarray:
    """bool [H, W]: the mask's pixels within d = max(1, round(ratio * image diagonal)) of its edge.

    Cheng et al.'s reference erodes the zero-padded mask d times with a 3x3 square and subtracts;
    a pixel survives d such erosions exactly when its chessboard distance to the nearest
    background pixel (image border included) exceeds d, which one distance transform gives.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    d = max(1, int(round(dilation_ratio * math.hypot(h, w))))
    padded = np.pad(mask, 1)
    inner = distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1] > d
    return mask & ~inner


def boundary_iou(pred, gt, dilation_ratio: float = 0.02) -> float:
    """IoU of the two masks' boundary regions (`mask_boundary`); 1.0 when both are empty."""
    pred, gt = _pair(pred, gt)
    return iou(mask_boundary(pred, dilation_ratio), mask_boundary(gt, dilation_ratio))


def precision(pred, gt) -> float:
    """|pred & gt| / |pred|: how much of what was predicted is right; 1.0 for an empty prediction."""
    pred, gt = _pair(pred, gt)
    predicted = np.count_nonzero(pred)
    return 1.0 if predicted == 0 else np.count_nonzero(pred & gt) / predicted


def recall(pred, gt) -> float:
    """|pred & gt| / |gt|: how much of the truth was found; 1.0 for an empty truth."""
    pred, gt = _pair(pred, gt)
    true = np.count_nonzero(gt)
    return 1.0 if true == 0 else np.count_nonzero(pred & gt) / true


def mask_metrics(pred, gt, dilation_ratio: float = 0.02) -> Dict[str, float]:
    """{"iou", "accuracy", "boundary_iou"} of one predicted mask against its ground truth."""
    return {
        "iou": iou(pred, gt),
        "accuracy": accuracy(pred, gt),
        "boundary_iou": boundary_iou(pred, gt, dilation_ratio),
    }


def summarise(per_prompt: List[dict]) -> Dict[str, Optional[float]]:
    """{"mIoU", "mAcc", "mBIoU", "num_prompts"}: means over prompts of "iou", "accuracy",
    "boundary_iou" (a prompt lacking a key is left out of that mean); None where nothing to average
    (None, not NaN, so the result stays valid JSON)."""

    def mean(key: str) -> Optional[float]:
        values = [float(p[key]) for p in per_prompt if p.get(key) is not None]
        return float(np.mean(values)) if values else None

    return {
        "mIoU": mean("iou"),
        "mAcc": mean("accuracy"),
        "mBIoU": mean("boundary_iou"),
        "num_prompts": len(per_prompt),
    }


def _pair(pred, gt):
    pred, gt = _bool(pred), _bool(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ValueError(f"masks must be 2-D and the same shape, got {pred.shape} and {gt.shape}")
    return pred, gt


def _bool(mask) -> np.ndarray:
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool, copy=False)
