"""A trained run opened for the tools: its click index refuses diverged features."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from splatseg_ns.trained_run import RunError, TrainedRun
from tests.helpers import features_with_nan


def test_select_tool_refuses_nan_features(tmp_path):
    run = TrainedRun.__new__(TrainedRun)
    run.config_path, run.step, run._click_indices = tmp_path / "config.yml", 3999, {}
    run.model = SimpleNamespace(gauss_params={"seg_features": features_with_nan()}, levels={"coarse": SimpleNamespace(centers=torch.eye(12)[:3])})
    with pytest.raises(RunError, match="2 of 100 Gaussians have NaN/inf"):
        run.click_index("coarse")
