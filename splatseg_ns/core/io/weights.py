"""Model checkpoints (SAM, DINO, CLIP): a path the user gives, or the official file, downloaded once.

Downloads go to `weights_dir()` ($SPLATSEG_CACHE, else ~/.cache/splatseg). Offline, or with a
path that does not exist, `WeightsError` says which file to put where and which flag to pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple


class WeightsError(RuntimeError):
    """A model checkpoint that is missing, unreadable or for another model."""


def weights_dir() -> Path:
    """Where downloaded checkpoints are kept: $SPLATSEG_CACHE, else ~/.cache/splatseg."""
    return Path(os.environ.get("SPLATSEG_CACHE") or Path.home() / ".cache" / "splatseg").expanduser()


def _download(url: str, destination: Path) -> None:
    """Fetch `url` into `destination` (torch.hub writes a temporary file and renames it)."""
    import torch.hub

    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(destination), progress=True)


def read_state_dict(path: Path, nested: Tuple[str, ...] = ("model",)) -> Dict[str, Any]:
    """A checkpoint's state dict (`weights_only` loading), unwrapped from the first of `nested` that holds one;
    a WeightsError names the file when it is not readable (an incomplete download, say) or holds no dict."""
    import torch

    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated download, not a torch file, pickled objects
        raise WeightsError(
            f"{path}: cannot read the checkpoint ({type(err).__name__}: {str(err)[:200]}). If it was downloaded, "
            "the download may be incomplete: delete the file and run again."
        ) from err
    for key in nested:
        if isinstance(state_dict, dict) and isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    if not isinstance(state_dict, dict):
        raise WeightsError(f"{path}: expected a state dict, found a {type(state_dict).__name__}.")
    return state_dict


def resolve_checkpoint(
    explicit: Optional[Path], url: str, what: str, flag: str, filename: Optional[Path] = None
) -> Path:
    """A local checkpoint file: `explicit`, or `weights_dir() / filename` (default: the name in
    `url`), downloaded from `url` when absent.

    Raises `WeightsError` naming the file, the folder to put it in and the flag to pass.
    """
    if explicit is not None:
        explicit = Path(explicit).expanduser()
        if not explicit.is_file():
            default = f"leave {flag} unset to download {url}" if url else f"pass {flag} an existing file"
            raise WeightsError(
                f"{explicit}: {what} checkpoint not found (given by {flag}). Fix the path, or {default}."
            )
        return explicit
    target = weights_dir() / (filename or Path(url).name)
    if target.is_file():
        return target
    try:
        _download(url, target)
    except Exception as err:  # offline, proxy, disk full...
        raise WeightsError(
            f"No {what} checkpoint: {target} does not exist and downloading {url} failed "
            f"({type(err).__name__}: {str(err)[:200]}). Download that file on a machine with internet and put it "
            f"at {target} (or set $SPLATSEG_CACHE to the folder that holds it), or pass {flag} /path/to/{target.name}."
        ) from err
    if not target.is_file():
        raise WeightsError(f"downloading {url} did not produce {target}; put the file there or pass {flag} PATH.")
    return target
