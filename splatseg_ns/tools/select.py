"""`splatseg select`: Gaussians by clicks on a view, or by name.

A click picks the candidate that the Gaussians blended at its pixel carry most weight for
(`core.render.contributors`, computed for that one pixel, no render), leaving out the Gaussians that
belong to no candidate, so a floater in front of an object cannot steal the click; a name picks
the candidate whose masks' CLIP embeddings match it best. Positive clicks add candidates,
negative ones remove them (a candidate hit by both is split by which click each of its Gaussians
is closer to); `core.segment.selection.select_clicked` is the rule, the one the viewer uses too.

Masks of one object in some views (`--masks DIR`, e.g. from a text-prompted detector) select it
without any feature: every Gaussian votes with its rendered weight inside and outside them
(FlashSplat's lifting, `core.segment.lifting`), on a splatseg or a plain splatfacto run. The result is a
selection file for `splatseg export`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from splatseg_ns.core.extract.clip_embeddings import clip_text_encoder
from splatseg_ns.core.features import Level
from splatseg_ns.core.io.images import IMAGE_SUFFIXES
from splatseg_ns.core.io.selection_file import MASK_LEVEL, Selection
from splatseg_ns.core.render.contributors import PixelContributors, click_candidate
from splatseg_ns.core.segment.lifting import tally_votes
from splatseg_ns.core.segment.selection import (
    MIN_CLICK_OPACITY,
    ClickIndex,
    select_by_text,
    select_clicked,
    select_prompts,
)
from splatseg_ns.trained_run import RunError, TrainedRun, View

Pixel = Tuple[float, float]


class ClickOnNoSegment(RunError):
    """A click whose pixel shows only Gaussians that belong to no segment: the method found nothing there
    (an evaluation scores it as an empty selection)."""


def check_click_hits(view: View, pixel: Pixel, contributors: PixelContributors) -> None:
    """A RunError when a click on `pixel` of `view` hits empty background."""
    if contributors.opacity < MIN_CLICK_OPACITY:
        raise RunError(
            f"Click ({pixel[0]}, {pixel[1]}) on {view.name} hits empty background (rendered opacity "
            f"{contributors.opacity:.2f}); click on the object you want."
        )


def clicked_candidate(view: View, pixel: Pixel, contributors: PixelContributors, index: ClickIndex) -> int:
    """The candidate a click on `pixel` of `view` picks; a RunError when it hits only Gaussians that
    belong to no segment."""
    x, y = pixel
    candidate, _ = click_candidate(contributors, index.assignment, index.num_candidates)
    if candidate < 0:
        raise ClickOnNoSegment(f"Click ({x}, {y}) on {view.name} hits only Gaussians that belong to no segment (background "
                       "no mask covered, or floaters); click on the object you want.")
    return candidate


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
    clicks = [run.pixel_contributors(view, x, y) for x, y in [*positive, *negative]]
    for pixel, found in zip([*positive, *negative], clicks):
        check_click_hits(view, pixel, found)
    index = run.click_index(level)
    for pixel, found in zip([*positive, *negative], clicks):
        clicked_candidate(view, pixel, found, index)  # refuses a click on Gaussians of no segment
    selected = select_clicked(index, run.gaussian_features(level), clicks[: len(positive)], clicks[len(positive):],
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
    embeddings = run.model.levels[level].clip
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


def select_by_masks(run: TrainedRun, mask_dir: Path, min_weight: float = 1e-3) -> Selection:
    """The Gaussians that carry more of their rendered weight inside the masks of `mask_dir` than outside,
    over the views that have one: DIR/<image stem>.png, binary (> 127 = the object), on the image files
    (any size of the image's aspect). Views without a mask do not count."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise RunError(f"{mask_dir}: no such folder. Give --masks a folder of binary masks named like the images "
                       "(frame_00001.png for the view frame_00001.png).")
    files = sorted(p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise RunError(f"{mask_dir}: no masks (.png or .jpg) in it. Put one binary mask per view there, named like "
                       "the view's image.")
    view_masks, unknown, seen = [], [], {}
    for path in files:
        try:
            view = run.view(path.stem)
        except RunError:
            unknown.append(path.name)
            continue
        if view.name in seen:
            raise RunError(f"{mask_dir}: {seen[view.name]} and {path.name} are both masks of view {view.name}; keep one.")
        seen[view.name] = path.name
        view_masks.append((view, view.read_mask(path)))
    if unknown and view_masks:
        print(f"note: {len(unknown)} mask(s) in {mask_dir} are named like no view of this run and were ignored: "
              f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''} (views are named like {view_masks[0][0].name})")
    if not view_masks:
        examples = ", ".join(unknown[:3])
        raise RunError(f"{mask_dir}: none of its masks is named like a view of this run ({examples}, ...); name each "
                       f"mask like its image file (e.g. {run.view_names()[0]}).")
    if not any(mask.any() for _, mask in view_masks):
        raise RunError(f"{mask_dir}: every mask is empty (no pixel > 127); draw the object in white on black.")
    votes = tally_votes(run.mask_weights(view_masks), min_weight=min_weight)
    indices: List[int] = (votes.labels == 0).nonzero().squeeze(-1).cpu().tolist()
    if not indices:
        raise RunError(f"{mask_dir}: the masks select no Gaussian (none carries more weight inside them than outside); "
                       "check that each mask belongs to the view it is named after.")
    prompts = {"masks": str(mask_dir.resolve()), "views": [view.name for view, _ in view_masks],
               "ignored": unknown}
    return Selection(str(run.config_path), run.fingerprint, MASK_LEVEL, indices, prompts)
