"""The two levels of the per-Gaussian feature."""

from __future__ import annotations

import pytest
import torch

from splatseg_ns.core.features import level_features, level_slice


def test_level_slice():
    f = torch.arange(24.0)[None]
    assert level_features(f, "coarse").shape[-1] == 12
    assert torch.equal(level_features(f, "fine"), f)
    assert level_slice("coarse", coarse_dim=8) == slice(0, 8)
    with pytest.raises(ValueError):
        level_slice("medium")
