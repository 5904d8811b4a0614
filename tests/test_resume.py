"""An interrupted `ns-train splatseg` resumes from its last checkpoint, in either stage, to the same end.

The reference is the session's uninterrupted run (`trained_demo_run`, 250 colour + 150 feature
steps). Two runs stop early, one in the colour stage (after step 133) and one in the feature stage
after GFL has started (after step 360), and resume with `--load-dir`. Bit-identical results are
not possible (nerfstudio checkpoints hold neither the random state nor the densification
statistics), so "the same result" is: the same final step, candidates in the final checkpoint,
and click-selection scores on held-out views as good as the uninterrupted run's.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List

import pytest

from splatseg_ns.demo import demo_train_args, ns_train_executable

COLOUR_STEPS, FEATURE_STEPS = 250, 150  # as the trained_demo_run fixture
TOTAL = COLOUR_STEPS + FEATURE_STEPS
PROMPT_VIEW = "frame_00001.png"
SCORE_VIEWS = [f"frame_{i:05d}.png" for i in (4, 7, 10, 13)]


def train(args: List[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1")
    result = subprocess.run([ns_train_executable(), *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def with_max_iterations(args: List[str], steps: int) -> List[str]:
    args = list(args)
    args[args.index("--max-num-iterations") + 1] = str(steps)
    return args


def checkpoint_steps(run_dir: Path) -> List[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / "nerfstudio_models").glob("step-*.ckpt"))


def mean_iou(config: Path, data: Path, bench_dir: Path) -> float:
    from splatseg_ns.tools.benchmark_data import write_benchmark
    from splatseg_ns.tools.evaluate import evaluate
    from splatseg_ns.trained_run import TrainedRun

    if not bench_dir.exists():
        write_benchmark(data, bench_dir, "coarse", PROMPT_VIEW, SCORE_VIEWS)
    return evaluate(TrainedRun(config), bench_dir)["overall"]["mIoU"]


@pytest.mark.parametrize("interrupt_after", [133, 360], ids=["colour-stage", "feature-stage-after-gfl-started"])
def test_interrupted_run_resumes_to_the_same_end(interrupt_after, demo_scene, trained_demo_run, tmp_path):
    base = demo_train_args(demo_scene, tmp_path, COLOUR_STEPS, FEATURE_STEPS, timestamp="first")
    train(with_max_iterations(base, interrupt_after + 1))  # as if killed right after this checkpoint
    first = tmp_path / "demo" / "splatseg" / "first"
    assert checkpoint_steps(first)[-1] == interrupt_after

    resumed_args = demo_train_args(demo_scene, tmp_path, COLOUR_STEPS, FEATURE_STEPS, timestamp="resumed")
    result = train([*resumed_args, "--load-dir", str(first / "nerfstudio_models")])
    assert f"resuming at step {interrupt_after + 1} of {TOTAL}" in result.stdout
    resumed = tmp_path / "demo" / "splatseg" / "resumed"
    assert checkpoint_steps(resumed)[-1] == TOTAL - 1  # the same last step as the uninterrupted run

    import torch

    state = torch.load(resumed / "nerfstudio_models" / f"step-{TOTAL - 1:09d}.ckpt", map_location="cpu", weights_only=False)
    assert state["pipeline"]["_model.candidate_centers_coarse"].shape[0] >= 2

    bench = tmp_path.parent / "resume_bench"
    reference = mean_iou(trained_demo_run, demo_scene, bench)
    score = mean_iou(resumed / "config.yml", demo_scene, bench)
    assert score > 0.7 and score > reference - 0.08, (score, reference)
