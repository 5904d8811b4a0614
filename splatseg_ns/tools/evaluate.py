"""`splatseg eval`: score a run's click selections against ground-truth masks (the contract's benchmark format).

DIR/prompts.json lists prompts {"name", "view", "positive": [[x, y], ...], "negative": [...],
"level"}; DIR/gt/<name>/<image stem>.png are binary masks on the views to score. Each prompt's
selection is rendered into those views (the selected Gaussians alpha-blended as a 0/1 value,
thresholded at 0.5) and compared with the mask: IoU, pixel accuracy, boundary IoU per view,
averaged per prompt, and over prompts: mIoU / mAcc / mBIoU, for all scored views and, separately,
for the training views and the views held out of training (where floaters in front of the
camera are what a user meets when they orbit), and for prompts clicked in either.

With DIR/amodal/<name>/<image stem>.png (the object's full silhouette rendered alone), the object
is also exported as `splatseg export` writes it, read back from the PLY, rendered alone, and
scored against those: precision, recall and IoU, which is what a user sees opening the object in
another viewer (the visible-only masks hide what an export carries behind other objects).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from splatseg_ns.core.features import LEVELS
from splatseg_ns.core.files import parse_json, path_component
from splatseg_ns.core.io.ply import read_gaussians_ply
from splatseg_ns.core.io.selection_file import Selection, SelectionError
from splatseg_ns.core.segment.metrics import iou, mask_metrics, precision, recall, summarise
from splatseg_ns.tools.export import export_selection
from splatseg_ns.tools.select import ClickOnNoSegment, select_by_view_clicks
from splatseg_ns.trained_run import RunError, TrainedRun, View

SPLITS = {"train": "train_views", "eval": "heldout_views"}
"""A view's split -> its key in the summaries."""


def load_prompts(benchmark_dir: Path) -> List[Dict[str, Any]]:
    """The prompts of a benchmark folder, every field checked; a RunError names the file, the prompt and the
    field."""
    path = Path(benchmark_dir) / "prompts.json"
    if not path.is_file():
        raise RunError(f"{path}: missing. A benchmark folder holds prompts.json and gt/<name>/<image stem>.png "
                       "(`splatseg make-benchmark` writes one).")
    try:
        prompts = parse_json(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise RunError(f"{path}: not JSON ({err}); write it again with `splatseg make-benchmark`.") from err
    shape = "a list of {name, view, positive: [[x, y], ...], negative: [[x, y], ...], level} objects"
    if not isinstance(prompts, list) or not prompts:
        raise RunError(f"{path}: expected {shape}, got {type(prompts).__name__ if prompts else 'nothing'}.")
    names = set()
    for number, prompt in enumerate(prompts):
        where = f"{path}: prompt {number}"
        if not isinstance(prompt, dict):
            raise RunError(f"{where} is a {type(prompt).__name__}; expected {shape}.")
        name = prompt.get("name")
        try:
            path_component(name, f"{where}: field 'name' (the name of its gt/ folder)")
        except ValueError as err:
            raise RunError(str(err)) from None
        if name in names:
            raise RunError(f"{where}: name {name!r} is used twice; prompts need their own gt/<name>/ folders.")
        names.add(name)
        where = f"{path}: prompt {name!r}"
        if not isinstance(prompt.get("view"), str):
            raise RunError(f"{where}: field 'view' must be an image file name, not {prompt.get('view')!r}.")
        for key in ("positive", "negative"):
            pixels = prompt.get(key, [])
            if not isinstance(pixels, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                            for v in p) for p in pixels):
                raise RunError(f"{where}: field {key!r} must be a list of [x, y] pixels, not {pixels!r}.")
        if not prompt.get("positive"):
            raise RunError(f"{where}: field 'positive' needs at least one [x, y] click.")
        if prompt.get("level", "coarse") not in LEVELS:
            raise RunError(f"{where}: field 'level' must be coarse or fine, not {prompt.get('level')!r}.")
    return prompts


@torch.no_grad()
def render_selection_mask(run: TrainedRun, view: View, selected: torch.Tensor) -> np.ndarray:
    """bool [H, W]: where the selected Gaussians make up most of the rendered pixel."""
    values = selected.float()[:, None]
    return (run.model.render_values(view.camera, values)[..., 0] > 0.5).cpu().numpy()


@torch.no_grad()
def render_ply_alone(run: TrainedRun, view: View, ply: Dict[str, np.ndarray]) -> np.ndarray:
    """bool [H, W]: where the Gaussians of a 3DGS PLY, rendered by themselves, are more than half opaque."""
    def column(*names):
        return torch.from_numpy(np.stack([ply[n] for n in names], axis=-1)).float().to(run.device)

    gaussians = {"means": column("x", "y", "z"), "quats": column("rot_0", "rot_1", "rot_2", "rot_3"),
                 "scales": column("scale_0", "scale_1", "scale_2"), "opacities": column("opacity")}
    ones = torch.ones(gaussians["means"].shape[0], 1, device=run.device)
    return (run.model.render_values(view.camera, ones, gaussians)[..., 0] > 0.5).cpu().numpy()


def _means(views: List[Dict[str, Any]], keys=("iou", "accuracy", "boundary_iou")) -> Dict[str, Optional[float]]:
    return {key: (float(np.mean([v[key] for v in views])) if views else None) for key in keys}


def score_export(run: TrainedRun, selection: Selection, amodal_dir: Path) -> Optional[Dict[str, Any]]:
    """The object as `splatseg export` writes it, read back and rendered alone, against the amodal masks."""
    files = sorted(amodal_dir.glob("*.png"))
    if not files:
        return None
    with tempfile.TemporaryDirectory(prefix="splatseg_eval_") as folder:
        source, output = Path(folder) / "selection.json", Path(folder) / "object.ply"
        try:
            report = export_selection(run, selection, source, output)
            written, dropped, ply = report.written, report.dropped, read_gaussians_ply(output)
        except (SelectionError, ValueError):  # nothing to export (nothing selected, or only floaters): all missed
            written, dropped, ply = 0, {}, None
    views = []
    for path in files:
        view = run.view(path.stem)
        gt = view.read_mask(path)
        pred = render_ply_alone(run, view, ply) if ply is not None else np.zeros_like(gt)
        views.append({"view": view.name, "split": view.split, "precision": precision(pred, gt),
                      "recall": recall(pred, gt), "iou": iou(pred, gt)})
    keys = ("precision", "recall", "iou")
    out = {"num_gaussians": written, "num_selected": len(selection.indices), "dropped": dropped,
           **_means(views, keys), "views": views}
    for split, key in SPLITS.items():
        out[key] = _means([v for v in views if v["split"] == split], keys)
    return out


def evaluate(run: TrainedRun, benchmark_dir: Path,
             select: Optional[Callable[[Dict[str, Any]], Selection]] = None) -> Dict[str, Any]:
    """Metrics per prompt (and per scored view) and overall, by split of the scored views and of the prompt's.

    select: a prompt's selection made another way than by its clicks (a benchmark's reference labels)."""
    benchmark_dir = Path(benchmark_dir)
    per_prompt = []
    for prompt in load_prompts(benchmark_dir):
        try:
            entry = evaluate_prompt(run, benchmark_dir, prompt, select)
        except RunError as err:
            raise RunError(f"{benchmark_dir / 'prompts.json'}: prompt {prompt['name']!r}: {err}") from err
        per_prompt.append(entry)
    return {"prompts": per_prompt, "overall": summarise_splits(per_prompt)}


def evaluate_prompt(run: TrainedRun, benchmark_dir: Path, prompt: Dict[str, Any],
                    select: Optional[Callable[[Dict[str, Any]], Selection]] = None) -> Dict[str, Any]:
    """One prompt's selection (its clicks', or `select`'s), scored on its views (and its export on the amodal
    masks, when there are some)."""
    level = prompt.get("level", "coarse")
    try:
        if select is not None:
            selection = select(prompt)
        else:
            selection = select_by_view_clicks(run, prompt["view"], [tuple(p) for p in prompt["positive"]],
                                              [tuple(p) for p in prompt.get("negative", [])], level)
        failure = None
    except ClickOnNoSegment as err:  # the method's miss, not the benchmark's: scored as selecting nothing
        selection, failure = Selection(str(run.config_path), run.fingerprint, level, []), str(err)
    selected = torch.zeros(run.model.num_points, dtype=torch.bool, device=run.device)
    selected[torch.tensor(selection.indices, dtype=torch.long, device=run.device)] = True
    gt_files = sorted((benchmark_dir / "gt" / prompt["name"]).glob("*.png"))
    if not gt_files:
        raise RunError(f"{benchmark_dir / 'gt' / prompt['name']}: no ground-truth masks for prompt {prompt['name']!r}.")
    views = []
    for gt_file in gt_files:
        view = run.view(gt_file.stem)
        scores = mask_metrics(render_selection_mask(run, view, selected), view.read_mask(gt_file))
        views.append({"view": view.name, "split": view.split, **scores})
    entry = {"name": prompt["name"], "level": selection.level, "view": prompt["view"],
             "view_split": run.view(prompt["view"]).split, "num_gaussians": len(selection.indices),
             **_means(views), "views": views}
    if failure is not None:
        entry["failure"] = failure
    for split, key in SPLITS.items():
        entry[key] = _means([v for v in views if v["split"] == split])
    exported = score_export(run, selection, benchmark_dir / "amodal" / prompt["name"])
    if exported is not None:
        entry["export"] = exported
    return entry


def summarise_splits(per_prompt: List[Dict[str, Any]]) -> Dict[str, Any]:
    """mIoU / mAcc / mBIoU over all prompts, plus: scored on training / held-out views only, for prompts
    clicked in training / held-out views, and the exports' mean precision, recall and IoU."""
    overall: Dict[str, Any] = summarise(per_prompt)
    for key in SPLITS.values():
        overall[key] = summarise([{**p[key], "name": p["name"]} for p in per_prompt if p[key]["iou"] is not None])
    for split, key in (("train", "prompts_in_train_views"), ("eval", "prompts_in_heldout_views")):
        overall[key] = summarise([p for p in per_prompt if p["view_split"] == split])
    exports = [p["export"] for p in per_prompt if "export" in p]
    if exports:
        overall["export"] = {f"m{k.capitalize() if k != 'iou' else 'IoU'}": float(np.mean([e[k] for e in exports]))
                             for k in ("precision", "recall", "iou")}
        overall["export"]["num_prompts"] = len(exports)
    return overall
