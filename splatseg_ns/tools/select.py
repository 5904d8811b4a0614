"""Select Gaussians by clicks on a view (Click-Gaussian's click: rendered feature -> global candidate),
or by name (CLIP: the text embedding picks the candidate whose masks' embeddings match best).

A click's rendered feature picks the nearest global candidate of the level; the selection is
the Gaussians assigned to it (optionally above a similarity threshold). Positive clicks add
candidates, negative ones remove them (a candidate hit by both is split by which click each of
its Gaussians is closer to).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from splatseg_ns.core.selection import ClickIndex, precompute_click_index, select_by_text, select_candidates
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
    click: ClickIndex


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
    click = precompute_click_index(features, centers)
    cache[level] = LevelIndex(centers, click.assignment, click.similarity, features, click)
    return cache[level]


def check_clicks_hit_something(view: View, accumulation: torch.Tensor, clicks: Sequence[Pixel]) -> None:
    for x, y in clicks:
        column, row = view.render_pixel(x, y)
        opacity = float(accumulation[row, column])
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
    selected = index.click.select(positive_features, negative_features, threshold, features=index.features)
    indices: List[int] = selected.nonzero().squeeze(-1).cpu().tolist()
    prompts = {"view": view.name, "positive": [list(p) for p in positive], "negative": [list(p) for p in negative],
               "threshold": threshold}
    return Selection(str(run.config_path), run.fingerprint, level, indices, prompts)


def clip_text_encoder(run: TrainedRun) -> Callable[[Sequence[str]], torch.Tensor]:
    """The CLIP text encoder of the model that embedded this run's masks."""
    from splatseg_ns.core.clip_embeddings import ClipMaskEmbeddings

    clip = ClipMaskEmbeddings(run.config.pipeline.datamanager.clip_config, device=str(run.device))
    return lambda texts: torch.as_tensor(clip.encode_text(list(texts)))


def select_by_text_query(
    run: TrainedRun,
    text: str,
    level: Level = "coarse",
    threshold: Optional[float] = None,
    top_k: int = 1,
    encode_text: Optional[Callable[[Sequence[str]], torch.Tensor]] = None,
) -> Selection:
    """The Gaussians of the segment(s) whose CLIP embedding best matches `text`."""
    embeddings = getattr(run.model, f"candidate_clip_{level}")
    if embeddings.numel() == 0:
        raise RunError(
            f"{run.config_path} has no CLIP embeddings of its segments, so it cannot be searched by name. Train with "
            "--pipeline.datamanager.text-queries True (the CLIP weights download once, or pass "
            "--pipeline.datamanager.clip-config.checkpoint FILE)."
        )
    index = level_index(run, level)
    if embeddings.shape[0] != index.centers.shape[0]:
        raise RunError(f"{run.config_path}: CLIP embeddings ({embeddings.shape[0]}) and candidates "
                       f"({index.centers.shape[0]}) disagree; the checkpoint is damaged.")
    encode = encode_text or clip_text_encoder(run)
    text_embedding = encode([text])[0].to(embeddings)
    chosen = select_by_text(text_embedding, embeddings, embeddings.norm(dim=-1) > 0, top_k=top_k)
    selected = select_candidates(index.assignment, chosen.to(index.assignment.device), index.centers.shape[0],
                                 index.similarity, threshold)
    indices: List[int] = selected.nonzero().squeeze(-1).cpu().tolist()
    prompts = {"text": text, "candidates": chosen.cpu().tolist(), "threshold": threshold}
    return Selection(str(run.config_path), run.fingerprint, level, indices, prompts)
