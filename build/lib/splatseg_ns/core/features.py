"""The per-Gaussian segmentation feature and its two levels (Click-Gaussian's granularity prior).

Click-Gaussian (Choi et al., ECCV 2024, arXiv 2407.11793), Sec. 3.2: each Gaussian carries one
feature f (24 channels); the coarse level (whole objects) is its leading channels f[:12], the
fine level (parts) is all of f, the coarse part concatenated with the rest. Everything that
works on one level (losses, global candidates, clicks, segments) takes its channels from here.
Import-light (no torch at import): the command line reads `Level` from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Tuple

if TYPE_CHECKING:
    import torch

Level = Literal["coarse", "fine"]
LEVELS: Tuple[Level, Level] = ("coarse", "fine")
COARSE_DIM = 12
"""Channels of the coarse level in the paper's 24-channel feature."""


def level_slice(level: str, coarse_dim: int = COARSE_DIM) -> slice:
    """Channels of the per-Gaussian feature that make up `level` (fine = coarse + the rest)."""
    if level == "coarse":
        return slice(0, coarse_dim)
    if level == "fine":
        return slice(None)
    raise ValueError(f"Unknown level {level!r}: use 'coarse' or 'fine'.")


def level_features(features: "torch.Tensor", level: str, coarse_dim: int = COARSE_DIM) -> "torch.Tensor":
    """The [..., D_level] view of `features` [..., D] for `level` (no copy)."""
    return features[..., level_slice(level, coarse_dim)]


def level_dim(level: str, feature_dim: int, coarse_dim: int = COARSE_DIM) -> int:
    """Channels of `level` in a `feature_dim`-channel feature."""
    level_slice(level)  # validates the name
    return coarse_dim if level == "coarse" else feature_dim


def init_features(num_points: int, dim: int) -> "torch.Tensor":
    """Random unit features: distinct Gaussians start dissimilar, as contrastive training needs."""
    import torch

    return torch.nn.functional.normalize(torch.randn(num_points, dim), dim=-1)
