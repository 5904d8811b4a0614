"""Shared fixtures: one short real `ns-train splatseg` on the demo scene, reused by every test that needs a run."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from splatseg_ns._torchvision_cpu import install
from tests.helpers import write_images

install()

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def demo_scene(tmp_path_factory) -> Path:
    from splatseg_ns.scenes.demo_scene import write_demo_scene

    return write_demo_scene(tmp_path_factory.mktemp("demo") / "scene", num_views=24, resolution=64)


@pytest.fixture(scope="session")
def trained_demo_run(demo_scene, tmp_path_factory) -> Path:
    """config.yml of a real ns-train splatseg run (colour then features) on CPU."""
    from splatseg_ns.tools.demo import demo_train_args, ns_train_executable

    output_dir = tmp_path_factory.mktemp("outputs")
    args = demo_train_args(demo_scene, output_dir, colour_steps=250, feature_steps=150, timestamp="test")
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1")
    result = subprocess.run([ns_train_executable(), *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    config = output_dir / "demo" / "splatseg" / "test" / "config.yml"
    assert config.exists(), f"no config at {config}; ns-train said: {result.stdout[-2000:]}"
    return config


@pytest.fixture(scope="session")
def run(trained_demo_run: Path):
    """The trained demo run opened once for the whole session (the tools', the viewer's and the CLI's tests)."""
    from splatseg_ns.trained_run import TrainedRun

    return TrainedRun(trained_demo_run)


@pytest.fixture
def offline(tmp_path, monkeypatch) -> Path:
    """No network: every checkpoint download fails as it would offline; weights go to a fresh folder."""
    import urllib.error

    from splatseg_ns.core.io import weights as weights_mod

    monkeypatch.setenv("SPLATSEG_CACHE", str(tmp_path / "weights"))

    def fail(url, destination):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(weights_mod, "_download", fail)
    return tmp_path / "weights"


@pytest.fixture
def dataset(tmp_path):
    """A folder of five small random images: (root, image paths)."""
    root = tmp_path / "scene"
    return root, write_images(root)

