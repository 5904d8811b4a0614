"""Select Gaussians by clicks on a view (Click-Gaussian's click: rendered feature -> global candidate).

A click's rendered feature picks the nearest global candidate of the level; the selection is
the Gaussians assigned to it (optionally above a similarity threshold). Positive clicks add
candidates, negative ones remove them (a candidate hit by both is split by which click each of
its Gaussians is closer to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from splatseg_ns.core.selection import precompute_assignment, select_by_clicks
from splatseg_ns.selection_file import Selection
from splatseg_ns.trained_run import Level, RunError, TrainedRun, View

Pixel = Tuple[float, float]
MIN_CLICK_OPACITY = 0.5
"""A click where the rendered opacity is below this hit empty background."""


@dataclass
class LevelIndex:
    """A level's global candidates and every Gaussian's assignment to them (computed once per run)."""

    centers: torch.Tensor
    assignment: torch.Tensor
    similarity: torch.Tensor
    features: torch.Tensor


def level_index(run: TrainedRun, level: Level) -> LevelIndex:
    """Candidates from the checkpoint; a run that has none (no GFL, old run) gets them built from its views."""
    cache = run.__dict__.setdefault("_level_index", {})
    if level in cache:
        return cache[level]
    centers = getattr(run.model, f"candidate_centers_{level}")
    if centers.shape[0] == 0:
        print("This run's checkpoint holds no global candidates; building them from the training views...")
        run.model.refresh_global_candidates(run.pipeline.datamanager)
        centers = getattr(run.model, f"candidate_centers_{level}")
    if centers.shape[0] == 0:
        raise RunError(
            f"No {level} global candidates could be built for {run.config_path}: the features do not form "
            "clusters. Train the feature stage longer (--max-num-iterations) or check the masks."
        )
    features = run.gaussian_features(level)
    assignment, similarity = precompute_assignment(features, centers)
    cache[level] = LevelIndex(centers, assignment, similarity, features)
    return cache[level]


def check_clicks_hit_something(view: View, accumulation: torch.Tensor, clicks: Sequence[Pixel]) -> None:
    for x, y in clicks:
        width, height = view.size
        if not (0 <= x < width and 0 <= y < height):
            raise RunError(f"Click ({x}, {y}) is outside view {view.name} ({width}x{height} pixels).")
        opacity = float(accumulation[int(y), int(x)])
        if opacity < MIN_CLICK_OPACITY:
            raise RunError(
                f"Click ({x}, {y}) on {view.name} hits empty background (rendered opacity {opacity:.2f}); "
                "click on the object you want."
            )


def select_by_view_clicks(
    run: TrainedRun,
    view_name: str,
    positive: Sequence[Pixel],
    negative: Sequence[Pixel] = (),
    level: Level = "coarse",
    threshold: Optional[float] = None,
) -> Selection:
    """The Selection that clicks on a view make; the clicks are (x, y) pixels of that image."""
    if not positive:
        raise RunError("Give at least one positive click (--click X Y).")
    view = run.view(view_name)
    outputs = run.render(view)
    check_clicks_hit_something(view, outputs["accumulation"][..., 0], [*positive, *negative])
    index = level_index(run, level)
    positive_features = run.features_at(view, positive, level, outputs)
    negative_features = run.features_at(view, negative, level, outputs) if negative else None
    selected = select_by_clicks(
        index.assignment, index.similarity, index.centers, positive_features, negative_features, threshold,
        features=index.features,
    )
    indices: List[int] = selected.nonzero().squeeze(-1).cpu().tolist()
    prompts = {"view": view.name, "positive": [list(p) for p in positive], "negative": [list(p) for p in negative],
               "threshold": threshold}
    return Selection(str(run.config_path), run.fingerprint, level, indices, prompts)
