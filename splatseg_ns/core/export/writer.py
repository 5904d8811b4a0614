"""What an export writes: the selected object (its weak members dropped), the scene without it.

The PLY layout is `ns-export gaussian-splat`'s (`ply`). An object export drops the Gaussians
that belong to it only weakly (`cleanup`: low similarity to its candidate, isolated floaters)
unless told to keep them; an inverted export removes the whole selection. What it kept and why
it dropped the rest (`ExportReport`) is said and written beside the PLY (`report_path`). The
command line (`tools.export`) and the viewer's "Export PLY" both call `export_selection`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional

import numpy as np
import torch

from splatseg_ns.core.export.cleanup import Cleanup, clean_selection
from splatseg_ns.core.files import atomic_write_json
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


WARN_DROPPED_SHARE = 0.1
"""An object export that drops more than this share of the selection says so, and how to keep them."""


@dataclass(frozen=True)
class ExportReport:
    """What one export wrote: how many of the selected Gaussians it kept, and why it dropped the others."""

    output: str
    selection: str
    selected: int
    """Gaussians the selection holds."""
    written: int
    """Gaussians in the PLY (for --invert: the scene without the selection)."""
    invert: bool = False
    keep_weak: bool = False
    dropped: Dict[str, int] = field(default_factory=dict)
    """Reason -> selected Gaussians left out for it (`cleanup.Cleanup.dropped`); empty when none were."""

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    def summary(self) -> str:
        """One line: what was written, and for an object, kept N of M and each reason's count."""
        if self.invert:
            return f"Wrote {self.written} Gaussians (the scene without the {self.selected} selected) to {self.output}"
        why = ", ".join(f"{count} {reason}" for reason, count in self.dropped.items() if count)
        dropped = f"; dropped {self.num_dropped} ({why})" if why else "; dropped none"
        return f"Wrote {self.written} Gaussians to {self.output}: kept {self.written} of {self.selected} selected{dropped}"

    def warning(self) -> Optional[str]:
        """A line when more than a tenth of the selection was dropped, with the flag that keeps them."""
        if self.invert or self.num_dropped <= WARN_DROPPED_SHARE * self.selected:
            return None
        return (f"Warning: the export dropped {self.num_dropped} of the {self.selected} selected Gaussians "
                f"({self.num_dropped / self.selected:.0%}); to write them all, export with --keep-weak "
                "(the viewer: 'Keep weak members').")


def report_path(output: Path) -> Path:
    """Where an export's report goes: beside the PLY, <name>.export.json."""
    return Path(output).with_suffix(".export.json")


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
) -> Cleanup:
    """The Gaussians (`params`, splatfacto's `gauss_params`) to write for `selection` (read from `source`), and how
    many selected ones were dropped for each reason (none for an inverted export or with `keep_weak`).

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
        return Cleanup(~selected, {})
    if keep_weak:
        return Cleanup(selected, {})
    weights = similarity().cpu().numpy() if similarity is not None else None  # before the means: it refuses a
    cleaned = clean_selection(params["means"].detach().cpu().numpy(), selected, weights, margin)  # diverged run
    if not cleaned.keep.any():
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
) -> ExportReport:
    """Write the selected object (or the scene without it) to `output` and its report to `report_path(output)`."""
    plan = export_mask(selection, source, run_fingerprint, params, similarity, margin, invert, keep_weak, run_path)
    written = write_gaussians_ply(output, **gaussian_arrays(params, sh_degree, plan.keep))
    dropped = {reason: count for reason, count in plan.dropped.items() if count}
    if not invert and int(plan.keep.sum()) > written:  # the PLY writer leaves these out, as ns-export does
        dropped["transparent or non-finite"] = int(plan.keep.sum()) - written
    report = ExportReport(str(output), str(source), int(selection.mask().sum()), written, invert, keep_weak, dropped)
    atomic_write_json(report_path(output), {**report.__dict__, "num_dropped": report.num_dropped,
                                            "warning": report.warning()})
    return report
