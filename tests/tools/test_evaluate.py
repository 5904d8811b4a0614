"""`splatseg eval` and `make-benchmark` on a real trained demo run."""

from __future__ import annotations

from splatseg_ns.tools.evaluate import evaluate
from splatseg_ns.tools.make_benchmark import write_benchmark

VIEW = "frame_00001.png"


def test_eval_scores_the_demo_objects(run, demo_scene, tmp_path):
    views = [f"frame_{i:05d}.png" for i in (4, 7, 10, 13)]
    prompts = write_benchmark(demo_scene, tmp_path / "bench", "coarse", VIEW, views)
    assert len(prompts) >= 3
    assert (tmp_path / "bench" / "gt" / prompts[0]["name"] / "frame_00004.png").exists()
    metrics = evaluate(run, tmp_path / "bench")
    overall = metrics["overall"]
    assert overall["num_prompts"] == len(prompts)
    assert overall["mIoU"] > 0.7, metrics
    assert 0 <= overall["mBIoU"] <= 1 and overall["mAcc"] > 0.9
