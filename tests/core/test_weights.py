"""Model checkpoints: downloaded once into the weights folder; offline, the error says which file goes where."""

from __future__ import annotations

import urllib.error

import pytest

from splatseg_ns.core.io import weights as weights_mod
from splatseg_ns.core.io.weights import WeightsError, resolve_checkpoint


def test_checkpoints_download_once_into_the_weights_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLATSEG_CACHE", str(tmp_path / "weights"))
    downloads = []

    def fake_download(url, destination):
        downloads.append(url)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(b"weights")

    monkeypatch.setattr(weights_mod, "_download", fake_download)
    url = "https://example.org/models/model_abc.pth"
    path = resolve_checkpoint(None, url, "Test", "--test.checkpoint")
    assert path == tmp_path / "weights" / "model_abc.pth" and path.read_bytes() == b"weights"
    assert resolve_checkpoint(None, url, "Test", "--test.checkpoint") == path
    assert downloads == [url]

    def offline(url, destination):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights_mod, "_download", offline)
    expected = r"other\.pth does not exist and downloading .*no network.*put it at .*--test.checkpoint"
    with pytest.raises(WeightsError, match=expected):
        resolve_checkpoint(None, "https://example.org/other.pth", "Test", "--test.checkpoint")
    with pytest.raises(WeightsError, match=r"missing\.pth: Test checkpoint not found \(given by --test.checkpoint\)"):
        resolve_checkpoint(tmp_path / "missing.pth", url, "Test", "--test.checkpoint")
