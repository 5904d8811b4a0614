"""`splatseg eval` and `make-benchmark` on a real trained demo run."""

from __future__ import annotations

from splatseg_ns.tools.evaluate import evaluate
from splatseg_ns.tools.make_benchmark import write_benchmark
from tests.helpers import VIEW


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


def test_a_click_on_gaussians_of_no_segment_scores_as_selecting_nothing(run, demo_scene, tmp_path):
    import json

    prompts = write_benchmark(demo_scene, tmp_path / "bench", "coarse", VIEW, ["frame_00004.png", "frame_00007.png"])
    missed = prompts[0]
    found = run.pixel_contributors(run.view(VIEW), *missed["positive"][0])
    run.click_index("coarse")  # votes cast, if the run has none yet
    labels = run.model.levels["coarse"].vote_labels
    kept = labels.clone()
    try:
        labels[found.ids] = -1  # the votes left every Gaussian at the pixel out of every segment
        run._click_indices.clear()
        metrics = evaluate(run, tmp_path / "bench")
    finally:
        labels.copy_(kept)
        run._click_indices.clear()
    scored = {p["name"]: p for p in metrics["prompts"]}
    assert "no segment" in scored[missed["name"]]["failure"]
    assert scored[missed["name"]]["iou"] == 0.0 and scored[missed["name"]]["num_gaussians"] == 0
    assert all("failure" not in p and p["iou"] > 0.5 for p in metrics["prompts"][1:]), json.dumps(metrics)[:2000]


def test_eval_scores_a_selection_made_another_way_than_by_the_clicks(run, demo_scene, tmp_path):
    from splatseg_ns.core.io.selection_file import MASK_LEVEL, Selection

    prompts = write_benchmark(demo_scene, tmp_path / "bench", "coarse", VIEW, ["frame_00004.png"])
    everything = Selection(str(run.config_path), run.fingerprint, MASK_LEVEL, list(range(run.model.num_points)))
    asked = []

    def select(prompt):
        asked.append(prompt["name"])
        return everything

    metrics = evaluate(run, tmp_path / "bench", select)
    assert asked == [p["name"] for p in prompts]
    clicked = evaluate(run, tmp_path / "bench")
    for by_hand, by_clicks in zip(metrics["prompts"], clicked["prompts"]):
        assert by_hand["num_gaussians"] == run.model.num_points
        assert by_hand["iou"] < by_clicks["iou"]  # the whole scene is a poor selection of any one object
