"""The pure-torch rasteriser against gsplat's CUDA kernels, forward and backward (needs CUDA; skips without).

Colours (SH degree 3), 24-channel features (gsplat pads them to 32), expected depth and alpha, and the gradients
of a random projection of the image with respect to every input. `scripts/gpu_check.sh` runs it on a GPU box and
records the largest differences (SPLATSEG_PARITY_JSON names the file).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from splatseg_ns.core.render.rasterize import rasterize
from tests.helpers import make_scene


def _gsplat_on_cuda():
    if not torch.cuda.is_available():
        return None
    try:
        from gsplat import rasterization
        from gsplat.cuda._backend import _C  # builds (or loads) the CUDA kernels
    except Exception:  # noqa: BLE001 - no compiler, an old gsplat: report as a skip reason
        return None
    return rasterization if _C is not None else None


GSPLAT = _gsplat_on_cuda()
pytestmark = pytest.mark.skipif(GSPLAT is None, reason="needs CUDA and gsplat's compiled kernels")
DIFFERENCES = {}


def _record(case: str, name: str, ours: torch.Tensor, theirs: torch.Tensor) -> float:
    difference = float((ours - theirs).abs().max()) if ours.numel() else 0.0
    DIFFERENCES.setdefault(case, {})[name] = difference
    path = os.environ.get("SPLATSEG_PARITY_JSON")
    if path:
        with open(path, "w") as file:
            json.dump(DIFFERENCES, file, indent=1)
    return difference


CASES = {
    "colour_sh3_rgb+ed": dict(sh_degree=3, D=3, render_mode="RGB+ED", rasterize_mode="classic"),
    "colour_sh3_antialiased": dict(sh_degree=3, D=3, render_mode="RGB", rasterize_mode="antialiased"),
    "features_24": dict(sh_degree=None, D=24, render_mode="RGB", rasterize_mode="classic"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_rasteriser_matches_gsplat_cuda(case):
    spec = CASES[case]
    scene = make_scene(2000, 96, 72, C=1, seed=3, dtype=torch.float32, sh_degree=spec["sh_degree"], D=spec["D"])
    scene = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in scene.items()}
    leaves = ("means", "quats", "scales", "opacities", "colors")
    outputs = {}
    for name, rasterizer in (("ours", rasterize), ("gsplat", GSPLAT)):
        inputs = {k: (v.detach().clone().requires_grad_() if k in leaves else v) for k, v in scene.items()}
        colours, alphas, _ = rasterizer(**inputs, sh_degree=spec["sh_degree"], packed=False,
                                        render_mode=spec["render_mode"], rasterize_mode=spec["rasterize_mode"])
        weights = torch.randn(colours.shape, generator=torch.Generator().manual_seed(0)).cuda()
        ((colours * weights).sum() + alphas.sum()).backward()
        outputs[name] = (colours.detach(), alphas.detach(), {k: inputs[k].grad for k in leaves})
    (ours, ours_alpha, ours_grads), (theirs, theirs_alpha, theirs_grads) = outputs["ours"], outputs["gsplat"]
    channels = spec["D"]
    assert _record(case, "colour", ours[..., :channels], theirs[..., :channels]) < 2e-3
    assert _record(case, "alpha", ours_alpha, theirs_alpha) < 2e-3
    if spec["render_mode"] == "RGB+ED":
        visible = theirs_alpha[..., 0] > 0.05
        assert _record(case, "depth", ours[..., -1][visible], theirs[..., -1][visible]) < 1e-2
    for name in leaves:
        scale = float(theirs_grads[name].abs().max()) or 1.0
        assert _record(case, f"grad_{name}_relative", ours_grads[name] / scale, theirs_grads[name] / scale) < 1e-2
