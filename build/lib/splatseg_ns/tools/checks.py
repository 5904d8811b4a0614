"""Checks of what a subcommand is given, made before its expensive part (loading a run, evaluating).

Each raises `InputError` naming the option (and the path) and what to give instead, so that a bad
output path or option costs a second, not a loaded run or a finished evaluation.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


class InputError(ValueError):
    """An option or path a subcommand cannot use; the message names it and the fix."""


def writable_file(path: Path, option: str) -> None:
    """`path` can be written as a file: not a folder, and its folder exists (or can be made) and is writable."""
    path = Path(path)
    if path.is_symlink():
        raise InputError(f"{option} {path}: is a symbolic link (to {os.readlink(path)}), which splatseg never replaces; "
                         "give the file itself or another path.")
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file path (e.g. {path / 'out.json'}).")
    if path.exists() and not path.is_file():
        raise InputError(f"{option} {path}: is not a regular file (a pipe or a device such as /dev/stdout); give a "
                         "file path.")
    _writable_folder(path.parent, option, path)


def fits_in_memory(bytes_needed: float, option: str, what: str) -> None:
    """Refuse up front what would run this machine out of memory, saying how much it would need."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if bytes_needed > total:
        raise InputError(f"{option}: {what} needs about {bytes_needed / 2**30:.1f} GiB of memory, more than this "
                         f"machine's {total / 2**30:.1f} GiB; give a smaller value.")


def not_someone_elses_folder(folder: Path, option: str, ours: bool, overwrite_flag: str) -> None:
    """A folder to write into must be empty, or hold what this command wrote before (`ours`), or be given
    with `overwrite_flag`: a dataset or anything else there is never overwritten silently."""
    folder = Path(folder)
    if folder.is_dir() and any(folder.iterdir()) and not ours:
        raise InputError(f"{option} {folder}: the folder is not empty and was not written by this command (its "
                         f"files would be overwritten); give an empty or new folder, or add {overwrite_flag}.")


def writable_folder(path: Path, option: str) -> None:
    """`path` can be written into as a folder: not a file, and it exists (or can be made) and is writable."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path}: is a file, not a folder; give a folder (it is made if missing).")
    _writable_folder(path, option, path)


def _writable_folder(folder: Path, option: str, given: Path) -> None:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{option} {given}: {existing} is a file, so no folder can be made there; give another path.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{option} {given}: {existing} is not writable; give a path in a folder you can write to.")


def existing_file(path: Path, option: str, what: str) -> None:
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder, not {what}.")
    if not path.is_file():
        raise InputError(f"{option} {path}: no such file ({what}).")


def existing_folder(path: Path, option: str, what: str) -> None:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{option} {path}: no such folder ({what}).")
    if not path.is_dir():
        raise InputError(f"{option} {path}: is a file, not a folder ({what}).")


def in_range(value: Optional[float], option: str, low: float, high: float, why: str) -> None:
    if value is not None and not low <= value <= high:
        raise InputError(f"{option} {value}: must lie in [{low:g}, {high:g}] ({why}).")


def at_least(value: Optional[int], option: str, low: int) -> None:
    if value is not None and value < low:
        raise InputError(f"{option} {value}: must be at least {low}.")


def device_available(device: Optional[str], option: str = "--device") -> None:
    """A torch device this machine has: cpu always, cuda[:i] only with a GPU."""
    if device is None:
        return
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as err:
        raise InputError(f"{option} {device}: not a device ({err}); use cpu or cuda.") from err
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{option} {device}: this machine has no CUDA GPU (torch {torch.__version__}); use cpu.")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise InputError(f"{option} {device}: there are only {torch.cuda.device_count()} CUDA devices.")
    elif parsed.type != "cpu":
        raise InputError(f"{option} {device}: use cpu or cuda.")
