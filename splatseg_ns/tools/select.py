"""`splatseg select`: Gaussians by clicks on a view, or by name.

A click's rendered feature picks the nearest global candidate of the level (Click-Gaussian,
Sec. 3.4); a name picks the candidate whose masks' CLIP embeddings match it best. Positive
clicks add candidates, negative ones remove them (a candidate hit by both is split by which
click each of its Gaussians is closer to); `core.selection.select_prompts` is the rule, the one
the viewer uses too. The result is a selection file for `splatseg export`.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch

from splatseg_ns.core.clip_embeddings import clip_text_encoder
from splatseg_ns.core.features import Level
from splatseg_ns.core.selection import MIN_CLICK_OPACITY, select_by_text, select_prompts
from splatseg_ns.core.selection_file import Selection
from splatseg_ns.trained_run import RunError, TrainedRun, View

Pixel = Tuple[float, float]


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
    index = run.click_index(level)
    positive_features = run.features_at(view, positive, level, outputs)
    negative_features = run.features_at(view, negative, level, outputs) if negative else None
    selected = select_prompts(index, run.gaussian_features(level), positive_features, negative_features,
                              threshold=threshold)
    indices: List[int] = selected.nonzero().squeeze(-1).cpu().tolist()
    prompts = {"view": view.name, "positive": [list(p) for p in positive], "negative": [list(p) for p in negative],
               "threshold": threshold}
    return Selection(str(run.config_path), run.fingerprint, level, indices, prompts)


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
    index = run.click_index(level)
    if embeddings.shape[0] != index.num_candidates:
        raise RunError(f"{run.config_path}: CLIP embeddings ({embeddings.shape[0]}) and candidates "
                       f"({index.num_candidates}) disagree; the checkpoint is damaged.")
    encode = encode_text or clip_text_encoder(run.config.pipeline.datamanager.clip_config, str(run.device))
    text_embedding = encode([text])[0].to(embeddings)
    chosen = select_by_text(text_embedding, embeddings, embeddings.norm(dim=-1) > 0, top_k=top_k)
    selected = select_prompts(index, run.gaussian_features(level), named=chosen.to(index.assignment.device),
                              threshold=threshold)
    indices: List[int] = selected.nonzero().squeeze(-1).cpu().tolist()
    prompts = {"text": text, "candidates": chosen.cpu().tolist(), "threshold": threshold}
    return Selection(str(run.config_path), run.fingerprint, level, indices, prompts)
