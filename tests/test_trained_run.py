"""A trained run opened for the tools: its click index refuses diverged features."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from splatseg_ns.core.losses import NonFiniteFeaturesError


def features_with_nan(n: int = 100, bad=(3, 50), value=float("nan")) -> torch.Tensor:
    features = torch.nn.functional.normalize(torch.randn(n, 24, generator=torch.Generator().manual_seed(0)), dim=-1)
    features[list(bad), 5] = value
    return features


def test_select_tool_refuses_nan_features():
    from splatseg_ns.trained_run import TrainedRun

    features = features_with_nan()
    run = SimpleNamespace(model=SimpleNamespace(candidate_centers_coarse=torch.eye(12)[:3]),
                          gaussian_features=lambda level: features[:, :12], _click_indices={})
    with pytest.raises(NonFiniteFeaturesError, match="2 of 100 Gaussians have NaN/inf"):
        TrainedRun.click_index(run, "coarse")
