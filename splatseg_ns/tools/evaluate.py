"""Score a run's click selections against ground-truth masks (the contract's benchmark format).

DIR/prompts.json lists prompts {"name", "view", "positive": [[x, y], ...], "negative": [...],
"level"}; DIR/gt/<name>/<image stem>.png are binary masks on the views to score. Each prompt's
selection is rendered into those views (the selected Gaussians alpha-blended as a 0/1 value,
thresholded at 0.5) and compared with the mask: IoU, pixel accuracy, boundary IoU per view,
averaged per prompt; mIoU / mAcc / mBIoU over prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import torch
from PIL import Image

from splatseg_ns.core.images import same_aspect
from splatseg_ns.core.metrics import mask_metrics, summarise
from splatseg_ns.tools.select import select_by_view_clicks
from splatseg_ns.trained_run import RunError, TrainedRun, View


def load_prompts(benchmark_dir: Path) -> List[Dict[str, Any]]:
    path = Path(benchmark_dir) / "prompts.json"
    if not path.exists():
        raise RunError(f"{path}: missing. A benchmark folder holds prompts.json and gt/<name>/<image stem>.png.")
    prompts = json.loads(path.read_text())
    if not isinstance(prompts, list) or not all(isinstance(p, dict) and {"name", "view", "positive"} <= set(p) for p in prompts):
        raise RunError(f"{path}: expected a list of {{name, view, positive, negative, level}} objects.")
    return prompts


@torch.no_grad()
def render_selection_mask(run: TrainedRun, view: View, selected: torch.Tensor) -> np.ndarray:
    """bool [H, W]: where the selected Gaussians make up most of the rendered pixel."""
    values = selected.float()[:, None]
    return (run.model.render_values(view.camera, values)[..., 0] > 0.5).cpu().numpy()


def read_gt_mask(path: Path, view: View) -> np.ndarray:
    """The ground-truth mask (drawn on the image file) as the rendered view sees it."""
    try:
        with Image.open(path) as im:
            mask = np.array(im.convert("L")) > 127
    except OSError as err:
        raise RunError(f"{path}: cannot read the ground-truth mask ({err}); write it as a binary PNG.") from err
    fw, fh = view.file_size
    if mask.shape != (fh, fw):
        if not same_aspect(mask.shape, (fh, fw)):
            raise RunError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image {fw}x{fh} (another aspect ratio).")
        mask = np.array(Image.fromarray(mask).resize((fw, fh), Image.NEAREST))
    return view.mask_to_render(mask)


def evaluate(run: TrainedRun, benchmark_dir: Path) -> Dict[str, Any]:
    """Metrics per prompt (and per scored view) and overall."""
    benchmark_dir = Path(benchmark_dir)
    per_prompt = []
    for prompt in load_prompts(benchmark_dir):
        selection = select_by_view_clicks(
            run, prompt["view"], [tuple(p) for p in prompt["positive"]],
            [tuple(p) for p in prompt.get("negative", [])], prompt.get("level", "coarse"),
        )
        selected = torch.zeros(run.model.num_points, dtype=torch.bool, device=run.device)
        selected[torch.tensor(selection.indices, dtype=torch.long, device=run.device)] = True
        gt_files = sorted((benchmark_dir / "gt" / prompt["name"]).glob("*.png"))
        if not gt_files:
            raise RunError(f"{benchmark_dir / 'gt' / prompt['name']}: no ground-truth masks for prompt {prompt['name']!r}.")
        views = []
        for gt_file in gt_files:
            view = run.view(gt_file.stem)
            scores = mask_metrics(render_selection_mask(run, view, selected), read_gt_mask(gt_file, view))
            views.append({"view": view.name, **scores})
        mean = {key: float(np.mean([v[key] for v in views])) for key in ("iou", "accuracy", "boundary_iou")}
        per_prompt.append({"name": prompt["name"], "level": selection.level, "num_gaussians": len(selection.indices),
                           **mean, "views": views})
    return {"prompts": per_prompt, "overall": summarise(per_prompt)}
