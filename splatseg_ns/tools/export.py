"""`splatseg export`: a selection as a 3DGS PLY (or the scene without it), or every segment.

The object export is `core.export.writer.export_selection` (the viewer's "Export PLY" too): the PLY
layout of `ns-export gaussian-splat`, weak members dropped unless `--keep-weak`. Segments come
from the global candidates or from clustering position and feature (`core.segment.segmentation`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from splatseg_ns.core.export import writer as core_export
from splatseg_ns.core.features import LEVELS, Level
from splatseg_ns.core.files import atomic_write_json, read_json
from splatseg_ns.core.io.ply import write_gaussians_ply, write_segments_ply
from splatseg_ns.core.io.selection_file import Selection
from splatseg_ns.core.segment.segmentation import segment_everything_by_candidates, segment_everything_by_clustering
from splatseg_ns.trained_run import TrainedRun


def export_selection(run: TrainedRun, selection: Selection, source: Path, output: Path, invert: bool = False,
                     keep_weak: bool = False) -> core_export.ExportReport:
    """Write the selected object (or the scene without it) to `output`; returns what it kept and dropped (also
    written beside the PLY, `core_export.report_path`)."""
    level = selection.level
    by_features = level in LEVELS  # a selection by masks has no candidate to be sure of
    return core_export.export_selection(
        output, selection, source, run.fingerprint, run.model.gauss_params, run.model.config.sh_degree,
        similarity=(lambda: run.click_index(level).similarity) if by_features else None,
        margin=run.model.weak_below(level) if by_features else 0.0, invert=invert, keep_weak=keep_weak,
        run_path=run.config_path,
    )


def segment_labels(run: TrainedRun, level: Level, method: str = "candidates", threshold: Optional[float] = None,
                   num_segments: Optional[int] = None) -> torch.Tensor:
    """Every Gaussian's segment: its global candidate, or a clustering of position + feature."""
    if method == "candidates":
        index = run.click_index(level)
        return segment_everything_by_candidates(index.assignment, index.similarity, threshold).cpu()
    if method == "clustering":  # DINO features when the run distilled them (the source project's way)
        dino = run.model.gauss_params["dino_features"] if "dino_features" in run.model.gauss_params else None
        run.check_features_finite("dino_features" if dino is not None else "seg_features")
        features = dino.detach() if dino is not None else run.gaussian_features(level)
        return segment_everything_by_clustering(run.model.means.detach().cpu(), features.cpu(), num_segments=num_segments)
    raise ValueError(f"Unknown segmentation method {method!r}: use 'candidates' or 'clustering'.")


SEGMENTS_MANIFEST = "segments.json"
"""What a segments export wrote into its folder: the next export there replaces exactly those files."""


def export_segments(run: TrainedRun, output_dir: Path, level: Level = "coarse", method: str = "candidates",
                    threshold: Optional[float] = None, min_gaussians: int = 10) -> Tuple[List[Path], int]:
    """One PLY per segment (segment_<id>.ply) plus segments_coloured.ply, the scene coloured by segment, and
    SEGMENTS_MANIFEST, the list of what it wrote.

    An earlier segments export in the folder is replaced whole: the files its manifest lists that this export
    does not write again are removed; nothing else is (a file named like a segment that no manifest lists is
    the user's). Returns (the files written, and how many files the earlier export had)."""
    labels = segment_labels(run, level, method, threshold).numpy()
    arrays = core_export.gaussian_arrays(run.model.gauss_params, run.model.config.sh_degree)
    output_dir = Path(output_dir)
    listed = read_json(output_dir / SEGMENTS_MANIFEST)
    listed = listed.get("files") if isinstance(listed, dict) else None
    earlier = [output_dir / name for name in listed if isinstance(name, str) and Path(name).name == name
               and name.endswith(".ply")] if isinstance(listed, list) else []
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
    atomic_write_json(output_dir / SEGMENTS_MANIFEST, {"files": [p.name for p in (*written, coloured)],
                                                      "run": str(run.config_path), "level": level, "method": method})
    for stale in set(earlier) - {*written, coloured}:
        stale.unlink(missing_ok=True)
    return [*written, coloured], len(earlier)
