"""Files splatseg writes and the hashes it identifies them by.

Every file splatseg writes (cache entries and manifests, selection files, PLYs) goes through
`atomic_write`: the bytes go to a temporary file in the destination's folder, are synced, and
the temporary file is renamed over the destination, so a reader sees the old file or the whole
new one, never a part, and an interrupted write leaves the old file as it was. The temporary
file is created with mode 0666 minus the umask, the mode any other new file gets (a `mkstemp`
file would be 0600: unreadable for a team sharing a cache, or for shard jobs run as other users).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np

Chunk = Union[bytes, bytearray, memoryview]

_SHA1_MEMO: Dict[Tuple[str, int, int], str] = {}


def atomic_write(path: Path, *chunks: Chunk, what: str = "file", sync: bool = True) -> None:
    """Write `chunks` to `path` atomically (see the module docstring); parent folders are created.

    Raises `IsADirectoryError` when `path` is a folder and `OSError` naming the path when it cannot
    be written; `what` names the file's kind in those messages ("PLY", "selection file", ...).
    `sync` flushes the data to disk before the rename, so a power cut cannot leave a renamed but
    empty file (cache entries); a PLY export of hundreds of MB skips it, as `ns-export` does.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"Cannot write {what} to {path}: it is a directory. Give a file path, "
                                f"e.g. {path / ('object.ply' if what == 'PLY' else 'out.json')}.")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
            if sync:
                file.flush()
                os.fsync(file.fileno())
        if path.is_file():  # replacing a file keeps its mode (a new file gets 0666 minus the umask)
            os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)
    except BaseException as err:  # an interrupt too: no temporary file is left behind
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # the folder may not even be listable
            pass
        if not isinstance(err, OSError):
            raise
        raise OSError(
            err.errno,
            f"Cannot write {what} to {path}: {err.strerror or err}. Nothing was written (a file already there is "
            "unchanged); choose an output path in a folder you can write to, or fix that folder's permissions.",
        ) from err


def atomic_write_json(path: Path, obj: Any, what: str = "file") -> None:
    atomic_write(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode(), what=what)


def parse_json(text) -> Any:
    """`json.loads`, with JSON nested too deep for Python's parser refused as a ValueError like any bad JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply to be read") from None


def read_json(path: Path) -> Optional[Any]:
    """The JSON value in `path`, or None when it is missing or not JSON."""
    try:
        with open(path, "rb") as f:
            return parse_json(f.read())
    except (OSError, ValueError):
        return None


def path_component(name: Any, where: str) -> str:
    """`name`, which will become one file or folder name: a ValueError naming `where` unless it is a non-empty
    string without path separators that is not '.' or '..' (a name from a file must not write elsewhere)."""
    if not isinstance(name, str) or not name or name in (".", "..") or any(c in name for c in "/\\\0"):
        raise ValueError(f"{where}: {name!r} cannot be a file or folder name (one path component: no '/', '\\', "
                         "'.' or '..')")
    return name


def npz_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def file_sha1(path: Path) -> str:
    """sha1 of a file's bytes (remembered per path, size and mtime within a process)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA1_MEMO:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA1_MEMO[key] = digest.hexdigest()
    return _SHA1_MEMO[key]


def settings_hash(settings: Dict[str, Any]) -> str:
    """Stable hash of a settings dict (key order does not matter; paths and the like as str)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]
