"""A trained run opened for the tools: its click index refuses diverged features."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from splatseg_ns.trained_run import RunError, TrainedRun


def features_with_nan(n: int = 100, bad=(3, 50), value=float("nan")) -> torch.Tensor:
    features = torch.nn.functional.normalize(torch.randn(n, 24, generator=torch.Generator().manual_seed(0)), dim=-1)
    features[list(bad), 5] = value
    return features


def test_select_tool_refuses_nan_features(tmp_path):
    run = TrainedRun.__new__(TrainedRun)
    run.config_path, run.step, run._click_indices = tmp_path / "config.yml", 3999, {}
    run.model = SimpleNamespace(gauss_params={"seg_features": features_with_nan()}, candidate_centers_coarse=torch.eye(12)[:3])
    with pytest.raises(RunError, match="2 of 100 Gaussians have NaN/inf"):
        run.click_index("coarse")
