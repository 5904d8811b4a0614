"""The selection file: which Gaussians of which run a user selected, and how.

JSON, written atomically. It names the run (its config.yml) and carries the run's fingerprint
(Gaussian count and a hash of their positions), so that applying it to another run, or to the
same run after more training changed its Gaussians, fails with a clear message instead of
exporting the wrong points.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

FORMAT = "splatseg-selection/1"


class SelectionError(ValueError):
    """A selection file that cannot be used here; the message says why and what to do."""


@dataclass
class Selection:
    run: str
    """config.yml of the run the selection was made on."""
    fingerprint: str
    """`TrainedRun.fingerprint` of that run: Gaussian count and a hash of their positions."""
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


def write_selection(path: Path, selection: Selection) -> None:
    """Atomic JSON write (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, **asdict(selection)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_selection(path: Path) -> Selection:
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise SelectionError(f"{path}: no such selection file. Make one with `splatseg select ... --output {path}`.")
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


def check_selection_matches(selection: Selection, fingerprint: str, source: Path) -> None:
    """Refuse a selection made on other Gaussians than the run's."""
    if selection.fingerprint != fingerprint:
        raise SelectionError(
            f"{source} was made on run {selection.run} ({selection.fingerprint.split(':')[0]} Gaussians), not on "
            f"this run ({fingerprint.split(':')[0]} Gaussians, or the same run after further training). "
            f"Use it with the run it was made on (--load-config {selection.run}), or select again on this run "
            "with `splatseg select --load-config ...`."
        )
