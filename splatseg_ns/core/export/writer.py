"""What an export writes: the selected object (its weak members dropped), the scene without it.

The PLY layout is `ns-export gaussian-splat`'s (`ply`). An object export drops the Gaussians
that belong to it only weakly (`cleanup`: low similarity to its candidate, isolated floaters)
unless told to keep them; an inverted export removes the whole selection. The command line
(`tools.export`) and the viewer's "Export PLY" both call `export_selection`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import numpy as np
import torch

from splatseg_ns.core.export.cleanup import clean_selection
from splatseg_ns.core.io.ply import SH_C0, write_gaussians_ply
from splatseg_ns.core.io.selection_file import Selection, SelectionError, check_selection_matches

GAUSSIAN_PARAMS = ("means", "scales", "quats", "opacities", "features_dc", "features_rest")


def gaussian_arrays(params: Mapping[str, torch.Tensor], sh_degree: int, keep: Optional[np.ndarray] = None
                    ) -> Dict[str, np.ndarray]:
    """The Gaussians (splatfacto's `gauss_params`) as the PLY writer wants them, rows `keep` only.

    Colour as SH, like ns-export: a model with sh_degree 0 stores colour logits, written as the
    SH DC coefficient of their sigmoid.
    """
    arrays = {name: params[name].detach().float().cpu() for name in GAUSSIAN_PARAMS}
    if sh_degree == 0:
        arrays["features_dc"] = (torch.sigmoid(arrays["features_dc"]) - 0.5) / SH_C0
    arrays = {name: value.numpy() for name, value in arrays.items()}
    return arrays if keep is None else {name: value[keep] for name, value in arrays.items()}


def export_mask(
    selection: Selection,
    source: Path,
    run_fingerprint: str,
    params: Mapping[str, torch.Tensor],
    similarity: Optional[Callable[[], torch.Tensor]],
    margin: float,
    invert: bool = False,
    keep_weak: bool = False,
    run_path: Optional[Path] = None,
) -> np.ndarray:
    """bool [N]: the Gaussians (`params`, splatfacto's `gauss_params`) to write for `selection` (read from `source`).

    run_fingerprint: `selection_file.fingerprint` of those Gaussians, which the selection must carry.
    similarity: gives each Gaussian's confidence in its candidate at the selection's level (called
    only when weak members are dropped); None when there is none (no candidates, a selection by
    masks): then only the floaters go. margin: the similarity below which a member is weak. run_path:
    the run's config.yml (to say when the selection was made on it before its Gaussians changed).
    """
    check_selection_matches(selection, run_fingerprint, source, run_path)
    selected = selection.mask()
    if not selected.any():
        raise SelectionError(f"{source} selects no Gaussians; nothing to export. Select again with other clicks.")
    if invert:
        if selected.all():
            raise SelectionError(f"{source} selects every Gaussian of the run, so the scene without it is empty; "
                                 "nothing to export.")
        return ~selected
    if keep_weak:
        return selected
    weights = similarity().cpu().numpy() if similarity is not None else None  # before the means: it refuses a
    cleaned = clean_selection(params["means"].detach().cpu().numpy(), selected, weights, margin)  # diverged run
    if not cleaned.any():
        raise SelectionError(f"{source}: every selected Gaussian looks like a floater; export with --keep-weak.")
    return cleaned


def export_selection(
    output: Path,
    selection: Selection,
    source: Path,
    run_fingerprint: str,
    params: Mapping[str, torch.Tensor],
    sh_degree: int,
    similarity: Optional[Callable[[], torch.Tensor]],
    margin: float,
    invert: bool = False,
    keep_weak: bool = False,
    run_path: Optional[Path] = None,
) -> int:
    """Write the selected object (or the scene without it) to `output`; returns the Gaussians written."""
    keep = export_mask(selection, source, run_fingerprint, params, similarity, margin, invert, keep_weak, run_path)
    return write_gaussians_ply(output, **gaussian_arrays(params, sh_degree, keep))
