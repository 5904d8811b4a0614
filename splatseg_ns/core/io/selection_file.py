"""The selection file: which Gaussians of which run a user selected, and how.

JSON, written atomically. It names the run (its config.yml) and carries the run's fingerprint
(Gaussian count and a hash of their positions, `fingerprint`), so that applying it to another
run, or to the same run after more training changed its Gaussians, fails with a clear message
instead of exporting the wrong points.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from splatseg_ns.core.features import LEVELS
from splatseg_ns.core.files import atomic_write, parse_json

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
    """coarse or fine (a feature level), or masks (`splatseg select --masks`)."""
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


MASK_LEVEL = "masks"
"""The level of a selection made from masks (`splatseg select --masks`), not at a feature level."""
SELECTION_LEVELS = (*LEVELS, MASK_LEVEL)
"""What a selection can be made at: a feature level (`core.features.LEVELS`), or from masks."""
_FINGERPRINT = re.compile(r"^(\d+):([0-9a-f]{16})$")


def read_selection(path: Path) -> Selection:
    """The selection in `path`, every field checked; a SelectionError names the file, the field and the fix."""
    path = Path(path)
    remake = "Make it again with `splatseg select`."
    if path.is_dir():
        raise SelectionError(f"{path} is a folder, not a selection file. Give the .json file `splatseg select` wrote.")
    try:
        payload = parse_json(path.read_text())
    except FileNotFoundError:
        raise SelectionError(f"{path}: no such selection file. Make one with `splatseg select ... --output {path}`.") from None
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise SelectionError(f"{path}: not a selection file ({err}). {remake}") from err
    if not isinstance(payload, dict):
        raise SelectionError(f"{path}: not a splatseg selection file (a JSON {type(payload).__name__}, not an object). "
                             f"{remake}")
    if payload.get("format") != FORMAT:
        raise SelectionError(f"{path}: not a splatseg selection file (format {payload.get('format')!r}, want {FORMAT}). "
                             f"{remake}")
    missing = [k for k in ("run", "fingerprint", "level", "indices") if k not in payload]
    if missing:
        raise SelectionError(f"{path}: selection file lacks {', '.join(missing)}. {remake}")

    def bad(field_name: str, what: str) -> SelectionError:
        return SelectionError(f"{path}: field {field_name!r} {what} (the file is damaged). {remake}")

    if not isinstance(payload["run"], str):
        raise bad("run", f"must be the run's config.yml path, not {payload['run']!r}")
    match = _FINGERPRINT.match(payload["fingerprint"]) if isinstance(payload["fingerprint"], str) else None
    if match is None:
        raise bad("fingerprint", f"must be '<Gaussian count>:<16 hex digits>', not {payload['fingerprint']!r}")
    if payload["level"] not in SELECTION_LEVELS:
        raise bad("level", f"must be one of {', '.join(SELECTION_LEVELS)}, not {payload['level']!r}")
    indices = payload["indices"]
    if not isinstance(indices, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in indices):
        raise bad("indices", "must be a list of whole numbers (Gaussian indices)")
    count = int(match.group(1))
    if indices and (min(indices) < 0 or max(indices) >= count):
        raise bad("indices", f"holds indices outside 0..{count - 1} for its {count} Gaussians")
    if len(set(indices)) != len(indices):
        raise bad("indices", "repeats indices")
    prompts = payload.get("prompts", {})
    if not isinstance(prompts, dict):
        raise bad("prompts", "must be an object")
    return Selection(payload["run"], payload["fingerprint"], payload["level"], sorted(indices), prompts)


def check_selection_matches(selection: Selection, run_fingerprint: str, source: Path,
                            run_path: Optional[Path] = None) -> None:
    """Refuse a selection made on other Gaussians than the run's (`run_fingerprint`; `run_path`: its
    config.yml, to say so when the selection was made on this very run before its Gaussians changed)."""
    if selection.fingerprint == run_fingerprint:
        return
    then, now = selection.fingerprint.split(":")[0], run_fingerprint.split(":")[0]
    if run_path is not None and Path(selection.run).resolve() == Path(run_path).resolve():
        raise SelectionError(
            f"{source} was made on this run ({selection.run}) when it had other Gaussians ({then} then, {now} now): "
            "the run trained on, or its checkpoint changed, since. Select again on the run as it is now with "
            "`splatseg select`."
        )
    raise SelectionError(
        f"{source} was made on run {selection.run} ({then} Gaussians), not on this run ({now} Gaussians, or the "
        f"same run after further training). Use it with the run it was made on (--load-config {selection.run}), "
        "or select again on this run with `splatseg select --load-config ...`."
    )
