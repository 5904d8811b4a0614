"""Atomic writes: a reader sees the old file or the whole new one, and an interrupted write leaves no trace."""

from __future__ import annotations

import pytest

from splatseg_ns.core import files as files_mod
from splatseg_ns.core.files import atomic_write


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "entry.npz"
    atomic_write(target, b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(files_mod.os, "replace", failing_replace)
    with pytest.raises(OSError):
        atomic_write(target, b"new content")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.npz"]
