"""Make the CUDA-only torchvision wheel importable on CPU-only machines.

On machines without CUDA the only torchvision wheel that matches torch 2.13 fails to load
its C++ ops, and its `_meta_registrations` module then dies registering a fake kernel for
`torchvision::nms`, an operator that was never defined. nerfstudio imports torchvision at
module level, so every `ns-*` command fails.

`install()` puts a finder on `sys.meta_path` that waits for torchvision to import
`_meta_registrations`; at that moment (the extension has been tried by then) it defines the
missing `nms`/`qnms` schemas with a pure-torch CPU kernel and lets torchvision's op check pass
(SAM's mask generator needs `batched_nms`; other C++ ops stay missing and fail when called).
Where torchvision's own ops load, it does nothing. The CPU set-up script installs a `.pth` file that calls `install()` at
interpreter start; GPU installs never get that file.
"""

from __future__ import annotations

import importlib.abc
import sys

_library = None  # keeps the torch.library registration alive


def nms_reference(boxes, scores, iou_threshold: float):
    """Greedy non-maximum suppression (x1, y1, x2, y2 boxes); indices kept, by falling score."""
    import torch

    order = scores.argsort(descending=True)
    boxes = boxes[order]
    x1, y1, x2, y2 = boxes.unbind(-1)
    areas = (x2 - x1).clamp_min(0) * (y2 - y1).clamp_min(0)
    suppressed = torch.zeros(len(order), dtype=torch.bool)
    keep = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        w = (torch.minimum(x2[i], x2[i + 1 :]) - torch.maximum(x1[i], x1[i + 1 :])).clamp_min(0)
        h = (torch.minimum(y2[i], y2[i + 1 :]) - torch.maximum(y1[i], y1[i + 1 :])).clamp_min(0)
        inter = w * h
        iou = inter / (areas[i] + areas[i + 1 :] - inter).clamp_min(1e-12)
        suppressed[i + 1 :] |= iou > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def register_missing_torchvision_ops() -> bool:
    """Define `torchvision::nms` and `qnms` when torchvision's C++ ops did not load.

    Returns True when it registered them, False when nothing was needed.
    """
    global _library
    import torch

    extension = sys.modules.get("torchvision.extension")
    if extension is not None and extension._has_ops():
        return False
    if _library is not None or hasattr(torch.ops.torchvision, "nms"):
        return False
    _library = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        _library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _library.impl(op, nms_reference, "CPU")
    if extension is not None:
        # torchvision.ops imports this name later; with nms defined the check must not refuse.
        extension._assert_has_ops = lambda: None
    return True


class _MetaRegistrationsHook(importlib.abc.MetaPathFinder):
    """Runs the fix just before torchvision imports `_meta_registrations`; never finds a module."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision._meta_registrations":
            uninstall()
            register_missing_torchvision_ops()
        return None


def install() -> None:
    """Arm the fix (idempotent); a no-op once torchvision is imported."""
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _MetaRegistrationsHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _MetaRegistrationsHook())


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _MetaRegistrationsHook)]
