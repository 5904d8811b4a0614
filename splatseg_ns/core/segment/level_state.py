"""What each level (coarse: whole objects, fine: parts) keeps with a trained model, in one place per level.

A level's global candidates (their centres, and their CLIP embeddings for text queries) and every
Gaussian's vote for one of them (label and vote share, `core.segment.lifting`). Each level is a small module whose
tensors are buffers, so they ride in checkpoints (`levels.<level>.<name>` in the state dict) while their
sizes change from run to run; `upgrade_state_dict` renames the flat keys of checkpoints written before
(`candidate_centers_coarse`, ...), so older runs still load.
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from splatseg_ns.core.features import LEVELS

EMPTY = {
    "centers": lambda dim: torch.zeros(0, dim),
    "clip": lambda dim: torch.zeros(0, 0),
    "vote_labels": lambda dim: torch.zeros(0, dtype=torch.long),
    "vote_share": lambda dim: torch.zeros(0),
}
"""Each buffer of a level, as it is before candidates exist (dim: the level's feature channels)."""
FORMER_NAMES = {"centers": "candidate_centers", "clip": "candidate_clip", "vote_labels": "vote_labels",
                "vote_share": "vote_share"}
"""Buffer -> the prefix its flat key had before this layout (`candidate_centers_coarse`, ...)."""


class LevelState(nn.Module):
    """One level's candidate centres [K, dim], CLIP embeddings [K, C] (or empty), vote labels [N] and shares [N]."""

    centers: torch.Tensor
    clip: torch.Tensor
    vote_labels: torch.Tensor
    vote_share: torch.Tensor

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        for name, empty in EMPTY.items():
            self.register_buffer(name, empty(dim))

    def has_votes(self, num_gaussians: int) -> bool:
        """Votes were cast for these Gaussians (and these candidates)."""
        return num_gaussians > 0 and self.vote_labels.shape[0] == num_gaussians

    def clear_votes(self) -> None:
        """Forget the votes (they were cast for other candidates)."""
        self.vote_labels = EMPTY["vote_labels"](self.dim).to(self.centers.device)
        self.vote_share = EMPTY["vote_share"](self.dim).to(self.centers.device)


def level_states(dims: Dict[str, int]) -> nn.ModuleDict:
    """A LevelState per level, its feature channels from `dims`."""
    return nn.ModuleDict({level: LevelState(dims[level]) for level in LEVELS})


def upgrade_state_dict(state: Dict[str, torch.Tensor], levels: nn.ModuleDict, prefix: str = "levels") -> None:
    """In place: the flat keys of older checkpoints renamed, missing buffers added empty (runs from before the
    votes), and each level's buffers resized to the checkpoint's (candidate counts differ between runs)."""
    for level, state_module in levels.items():
        for name, empty in EMPTY.items():
            key, former = f"{prefix}.{level}.{name}", f"{FORMER_NAMES[name]}_{level}"
            if key not in state:
                state[key] = state.pop(former) if former in state else empty(state_module.dim)
            setattr(state_module, name, torch.zeros_like(state[key], device=state_module.centers.device))
