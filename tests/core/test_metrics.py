"""Mask metrics on masks with known answers, and boundary extraction against Cheng et al.'s reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion

from splatseg_ns.core.segment.metrics import accuracy, boundary_iou, iou, mask_boundary, mask_metrics, summarise


def square(h: int, w: int, top: int, left: int, size: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[top : top + size, left : left + size] = True
    return mask


def reference_boundary(mask: np.ndarray, dilation_ratio: float) -> np.ndarray:
    """Cheng et al.'s mask_to_boundary: zero-pad, erode d times with a 3x3 square, subtract."""
    h, w = mask.shape
    d = max(1, int(round(dilation_ratio * math.sqrt(h**2 + w**2))))
    padded = np.pad(mask, 1)
    eroded = binary_erosion(padded, structure=np.ones((3, 3)), iterations=d, border_value=0)[1:-1, 1:-1]
    return mask & ~eroded


def test_iou_and_accuracy_of_overlapping_squares():
    a = square(100, 100, 10, 10, 40)  # 1600 px
    b = square(100, 100, 30, 30, 40)  # overlap 20 x 20 = 400
    assert iou(a, b) == pytest.approx(400 / (1600 + 1600 - 400))
    assert accuracy(a, b) == pytest.approx(1 - (2 * (1600 - 400)) / 10000)
    assert iou(a, a) == 1.0 and accuracy(a, a) == 1.0
    assert iou(a, ~a) == 0.0 and accuracy(a, ~a) == 0.0


def test_empty_masks():
    empty = np.zeros((20, 30), bool)
    full = square(20, 30, 5, 5, 10)
    for metric in (iou, accuracy, boundary_iou):
        assert metric(empty, empty) == 1.0
    assert iou(empty, full) == 0.0 and iou(full, empty) == 0.0
    assert boundary_iou(empty, full) == 0.0
    assert accuracy(empty, full) == pytest.approx(1 - 100 / 600)


@pytest.mark.parametrize("ratio", [0.0, 0.02, 0.05, 0.2])
def test_boundary_matches_reference_erosion(ratio):
    rng = np.random.default_rng(0)
    masks = [square(60, 80, 0, 0, 30), square(60, 80, 20, 25, 30), rng.random((60, 80)) > 0.4]
    masks.append(np.ones((60, 80), bool))
    for mask in masks:
        np.testing.assert_array_equal(mask_boundary(mask, ratio), reference_boundary(mask, ratio))


def test_boundary_iou_sanity():
    a = square(200, 200, 50, 50, 80)
    assert boundary_iou(a, a) == 1.0
    shifted = np.roll(a, 3, axis=1)
    assert iou(a, shifted) > boundary_iou(a, shifted)  # boundary IoU is the stricter one
    assert boundary_iou(a, shifted) < 1.0
    assert boundary_iou(a, np.roll(a, 1, axis=1)) > boundary_iou(a, np.roll(a, 6, axis=1))
    # A large object with a ragged edge: IoU barely moves, boundary IoU does.
    big = square(200, 200, 20, 20, 160)
    ragged = big.copy()
    ragged[20:180:2, 176:180] = False
    assert iou(big, ragged) > 0.98 and boundary_iou(big, ragged) < 0.95


def test_inputs_torch_and_shape_checks():
    a = square(10, 10, 2, 2, 4)
    assert iou(torch.from_numpy(a), a.astype(np.uint8)) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        iou(a, a[:5])
    with pytest.raises(ValueError):
        iou(a[None], a[None])


def test_mask_metrics_and_summarise():
    a = square(50, 50, 0, 0, 20)
    b = square(50, 50, 10, 10, 20)
    per_prompt = [dict(name="p1", **mask_metrics(a, a)), dict(name="p2", **mask_metrics(a, b))]
    assert per_prompt[0] == {"name": "p1", "iou": 1.0, "accuracy": 1.0, "boundary_iou": 1.0}
    summary = summarise(per_prompt)
    assert summary["mIoU"] == pytest.approx((1.0 + iou(a, b)) / 2)
    assert summary["mAcc"] == pytest.approx((1.0 + accuracy(a, b)) / 2)
    assert summary["mBIoU"] == pytest.approx((1.0 + boundary_iou(a, b)) / 2)
    assert summary["num_prompts"] == 2
    empty = summarise([])
    assert empty == {"mIoU": None, "mAcc": None, "mBIoU": None, "num_prompts": 0}
    json.dumps(empty, allow_nan=False)
