"""Export a selection, the scene without it, or every segment, as standard 3DGS PLY files.

The PLY layout is `ns-export gaussian-splat`'s (core.ply). An object export drops the
Gaussians that belong to it only weakly (core.cleanup: low similarity to the candidate,
isolated floaters) unless told to keep them; `--invert` removes the whole selection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from splatseg_ns.core.cleanup import clean_selection
from splatseg_ns.core.ply import write_gaussians_ply, write_segments_ply
from splatseg_ns.core.selection import segment_everything_by_candidates, segment_everything_by_clustering
from splatseg_ns.selection_file import Selection, SelectionError, check_selection_matches
from splatseg_ns.tools.select import level_index
from splatseg_ns.trained_run import Level, TrainedRun


def gaussian_arrays(run: TrainedRun, keep: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """The run's Gaussians as the PLY writer wants them (colour as SH, like ns-export)."""
    model = run.model
    dc = model.features_dc.detach()
    if model.config.sh_degree == 0:  # splatfacto stores logits then: export renderable SH, as ns-export does
        from nerfstudio.models.splatfacto import RGB2SH

        dc = RGB2SH(torch.sigmoid(dc))
    arrays = {
        "means": model.means, "scales": model.scales, "quats": model.quats, "opacities": model.opacities,
        "features_dc": dc, "features_rest": model.features_rest,
    }
    arrays = {name: value.detach().float().cpu().numpy() for name, value in arrays.items()}
    return arrays if keep is None else {name: value[keep] for name, value in arrays.items()}


def selection_to_keep(run: TrainedRun, selection: Selection, source: Path, invert: bool, keep_weak: bool) -> np.ndarray:
    check_selection_matches(selection, run.fingerprint, source)
    selected = selection.mask()
    if not selected.any():
        raise SelectionError(f"{source} selects no Gaussians; nothing to export. Select again with other clicks.")
    if invert:
        return ~selected
    if keep_weak:
        return selected
    run.check_features_finite()  # the clean-up below reads the features; --invert and --keep-weak do not
    index = level_index(run, selection.level)  # type: ignore[arg-type]
    margin = run.model.config.margin_coarse if selection.level == "coarse" else run.model.config.margin_fine
    cleaned = clean_selection(run.model.means.detach().cpu().numpy(), selected, index.similarity.cpu().numpy(), margin)
    if not cleaned.any():
        raise SelectionError(f"{source}: every selected Gaussian looks like a floater; export with --keep-weak.")
    return cleaned


def export_selection(run: TrainedRun, selection: Selection, source: Path, output: Path, invert: bool = False,
                     keep_weak: bool = False) -> int:
    """Write the selected object (or the scene without it) to `output`; returns the Gaussians written."""
    keep = selection_to_keep(run, selection, source, invert, keep_weak)
    return write_gaussians_ply(output, **gaussian_arrays(run, keep))


def segment_labels(run: TrainedRun, level: Level, method: str = "candidates", threshold: Optional[float] = None,
                   num_segments: Optional[int] = None) -> torch.Tensor:
    """Every Gaussian's segment: its global candidate, or a clustering of position + feature."""
    if method == "candidates":
        run.check_features_finite()
        index = level_index(run, level)
        return segment_everything_by_candidates(index.assignment, index.similarity, threshold).cpu()
    if method == "clustering":  # DINO features when the run distilled them (the source project's way)
        dino = run.model.gauss_params["dino_features"] if "dino_features" in run.model.gauss_params else None
        run.check_features_finite("dino_features" if dino is not None else "seg_features")
        features = dino.detach() if dino is not None else run.gaussian_features(level)
        return segment_everything_by_clustering(run.model.means.detach().cpu(), features.cpu(), num_segments=num_segments)
    raise ValueError(f"Unknown segmentation method {method!r}: use 'candidates' or 'clustering'.")


def export_segments(run: TrainedRun, output_dir: Path, level: Level = "coarse", method: str = "candidates",
                    threshold: Optional[float] = None, min_gaussians: int = 10) -> List[Path]:
    """One PLY per segment (segment_<id>.ply) plus segments_coloured.ply, the scene coloured by segment."""
    labels = segment_labels(run, level, method, threshold).numpy()
    arrays = gaussian_arrays(run)
    output_dir = Path(output_dir)
    written = []
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    for segment, count in zip(ids, counts):
        if count < min_gaussians:
            continue
        path = output_dir / f"segment_{segment:03d}.ply"
        try:
            write_gaussians_ply(path, **{name: value[labels == segment] for name, value in arrays.items()})
        except ValueError:  # every Gaussian of the segment transparent or non-finite
            continue
        written.append(path)
    coloured = output_dir / "segments_coloured.ply"
    write_segments_ply(coloured, arrays["means"], arrays["scales"], arrays["quats"], arrays["opacities"], labels)
    return [*written, coloured]
