"""The CPU torchvision fix: torchvision imports, nms is right, and the hook is a no-op where not needed."""

import subprocess
import sys

import torch

from splatseg_ns._torchvision_cpu import nms_reference


def test_nms_reference_keeps_the_best_of_overlapping_boxes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    keep = nms_reference(boxes, scores, 0.5)
    assert keep.tolist() == [3, 2]


def test_torchvision_and_nerfstudio_import_in_a_fresh_interpreter():
    code = (
        "import splatseg_ns._torchvision_cpu as m; m.install();"
        "import torch, torchvision;"
        "from torchvision.ops import batched_nms;"
        "b = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11.0]]);"
        "print(batched_nms(b, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), 0.5).tolist());"
        "import nerfstudio.pipelines.base_pipeline"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("[0]")
