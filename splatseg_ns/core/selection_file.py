"""The selection file: which Gaussians of which run a user selected, and how.

JSON, written atomically. It names the run (its config.yml) and carries the run's fingerprint
(Gaussian count and a hash of their positions, `fingerprint`), so that applying it to another
run, or to the same run after more training changed its Gaussians, fails with a clear message
instead of exporting the wrong points.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from splatseg_ns.core.files import atomic_write

FORMAT = "splatseg-selection/1"


class SelectionError(ValueError):
    """A selection file that cannot be used here; the message says why and what to do."""


@dataclass
class Selection:
    run: str
    """config.yml of the run the selection was made on."""
    fingerprint: str
    """`fingerprint` of that run's Gaussians: their count and a hash of their positions."""
    level: str
    """coarse or fine."""
    indices: List[int]
    """Indices of the selected Gaussians, ascending."""
    prompts: Dict[str, Any] = field(default_factory=dict)
    """How it was made: view, positive and negative clicks, text, threshold."""

    @property
    def num_gaussians(self) -> int:
        return int(self.fingerprint.split(":")[0])

    def mask(self) -> np.ndarray:
        """bool [num_gaussians]."""
        selected = np.zeros(self.num_gaussians, dtype=bool)
        selected[np.asarray(self.indices, dtype=np.int64)] = True
        return selected


def fingerprint(means) -> str:
    """Identifies these exact Gaussians (count and positions [N, 3]), so a selection can't be applied to another run."""
    if hasattr(means, "detach"):
        means = means.detach().float().cpu().contiguous().numpy()
    means = np.ascontiguousarray(means, dtype=np.float32)
    return f"{means.shape[0]}:{hashlib.sha1(means.tobytes()).hexdigest()[:16]}"


def write_selection(path: Path, selection: Selection) -> None:
    """Atomic JSON write (`files.atomic_write`)."""
    payload = {"format": FORMAT, **asdict(selection)}
    atomic_write(path, json.dumps(payload).encode(), what="selection file")


def read_selection(path: Path) -> Selection:
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise SelectionError(f"{path}: no such selection file. Make one with `splatseg select ... --output {path}`.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SelectionError(f"{path}: not a selection file ({err}). Make one with `splatseg select`.") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise SelectionError(f"{path}: not a splatseg selection file (format {payload.get('format')!r}, want {FORMAT}).")
    try:
        selection = Selection(**{k: payload[k] for k in ("run", "fingerprint", "level", "indices", "prompts")})
    except KeyError as err:
        raise SelectionError(f"{path}: selection file lacks {err}; make it again with `splatseg select`.") from err
    indices = np.asarray(selection.indices, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= selection.num_gaussians):
        raise SelectionError(f"{path}: indices out of range for {selection.num_gaussians} Gaussians; the file is damaged.")
    return selection


def check_selection_matches(selection: Selection, run_fingerprint: str, source: Path) -> None:
    """Refuse a selection made on other Gaussians than the run's (`run_fingerprint`)."""
    if selection.fingerprint != run_fingerprint:
        raise SelectionError(
            f"{source} was made on run {selection.run} ({selection.fingerprint.split(':')[0]} Gaussians), not on "
            f"this run ({run_fingerprint.split(':')[0]} Gaussians, or the same run after further training). "
            f"Use it with the run it was made on (--load-config {selection.run}), or select again on this run "
            "with `splatseg select --load-config ...`."
        )
