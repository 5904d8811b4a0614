"""When the feature stage does what: the training schedule as pure functions of the step.

One run trains colour and geometry (splatfacto's schedule) until `feature_stage_start`, then only
the segmentation features (Click-Gaussian). Within the feature stage GFL's global candidates are
rebuilt on GFL's schedule, and once more at the last step so that every checkpoint's candidates are
current; the votes are cast at the last step. The model's training callbacks ask this object and
do what it says, the way gsplat's strategies keep the decisions apart from the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from splatseg_ns.core.segment.global_candidates import GFLConfig
from splatseg_ns.core.segment.lifting import VoteConfig


@dataclass(frozen=True)
class FeatureSchedule:
    """The feature stage's schedule for one run."""

    feature_stage_start: int
    """First step of the feature stage (everything but the features frozen from here)."""
    gfl: GFLConfig
    """GFL's start and refresh interval, and its weight (0: GFL off)."""
    vote: VoteConfig
    """Whether the votes are cast at the end (`VoteConfig.enabled`)."""
    last_step: int = -1
    """The run's last step, resumed runs included (-1 until the trainer's callbacks know it)."""

    def in_feature_stage(self, step: int) -> bool:
        return step >= self.feature_stage_start

    def gfl_active(self, step: int) -> bool:
        """Whether GFL's pull and push terms train at this step."""
        return self.gfl.weight > 0 and step >= self.feature_stage_start + self.gfl.start_step

    def refresh_candidates(self, step: int) -> bool:
        """Whether the global candidates are rebuilt before this step."""
        since = step - self.feature_stage_start - self.gfl.start_step
        on_gfl_schedule = self.gfl_active(step) and since % self.gfl.refresh_every == 0
        return on_gfl_schedule or (step == self.last_step and self.in_feature_stage(step))

    def cast_votes(self, step: int) -> bool:
        """Whether the votes are cast before this step (the last, after the final refresh)."""
        return self.vote.enabled and step == self.last_step and self.in_feature_stage(step)

    def check_features(self, step: int, steps_per_save: int) -> bool:
        """Whether the features are checked for NaN/inf after this step: at the steps that save a
        checkpoint (nerfstudio keeps only the latest, so saving diverged ones would lose the last good one)."""
        saves = (steps_per_save and step % steps_per_save == 0) or step == self.last_step
        return self.in_feature_stage(step) and bool(saves)
