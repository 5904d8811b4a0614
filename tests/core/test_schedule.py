"""The feature stage's schedule: which steps rebuild the candidates, cast the votes, check the features."""

from splatseg_ns.core.segment.global_candidates import GFLConfig
from splatseg_ns.core.segment.lifting import VoteConfig
from splatseg_ns.core.segment.schedule import FeatureSchedule


def steps(schedule, decide, last=30):
    return [step for step in range(last + 1) if decide(step)]


def test_candidates_refresh_on_gfl_schedule_and_at_the_last_step():
    schedule = FeatureSchedule(10, GFLConfig(start_step=5, refresh_every=4, weight=1.0), VoteConfig(), last_step=29)
    assert steps(schedule, schedule.refresh_candidates) == [15, 19, 23, 27, 29]
    assert steps(schedule, schedule.gfl_active) == list(range(15, 31))
    assert steps(schedule, schedule.cast_votes) == [29]


def test_without_gfl_only_the_last_step_refreshes_and_without_votes_none_are_cast():
    schedule = FeatureSchedule(10, GFLConfig(start_step=5, weight=0.0), VoteConfig(enabled=False), last_step=29)
    assert steps(schedule, schedule.refresh_candidates) == [29]
    assert steps(schedule, schedule.gfl_active) == []
    assert steps(schedule, schedule.cast_votes) == []


def test_a_run_that_ends_before_the_feature_stage_refreshes_nothing():
    schedule = FeatureSchedule(50, GFLConfig(), VoteConfig(), last_step=29)
    assert steps(schedule, schedule.refresh_candidates) == []
    assert steps(schedule, schedule.cast_votes) == []


def test_features_are_checked_at_the_save_steps_of_the_feature_stage():
    schedule = FeatureSchedule(10, GFLConfig(), VoteConfig(), last_step=25)
    assert steps(schedule, lambda step: schedule.check_features(step, 10), last=25) == [10, 20, 25]
    assert steps(schedule, lambda step: schedule.check_features(step, 0), last=25) == [25]
