"""select / export / eval / make-benchmark on a real trained demo run (CPU), and their errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from splatseg_ns.core.ply import ply_property_names, read_gaussians_ply
from splatseg_ns.selection_file import SelectionError, read_selection, write_selection
from splatseg_ns.tools.benchmark_data import deepest_pixel, object_masks, write_benchmark
from splatseg_ns.tools.evaluate import evaluate
from splatseg_ns.tools.export import export_segments, export_selection
from splatseg_ns.tools.select import select_by_view_clicks
from splatseg_ns.trained_run import RunError, TrainedRun

VIEW = "frame_00001.png"


@pytest.fixture(scope="module")
def run(trained_demo_run: Path) -> TrainedRun:
    return TrainedRun(trained_demo_run)


@pytest.fixture(scope="module")
def objects(demo_scene: Path):
    """name -> (click pixel, mask) of each object in the prompt view."""
    masks = object_masks(demo_scene, demo_scene / "images" / VIEW, "coarse")
    return {name: (deepest_pixel(mask), mask) for name, mask in masks.items() if mask.sum() > 20}


def test_click_selects_one_object_and_export_writes_it(run, objects, tmp_path):
    sizes = {}
    for name, (click, _) in objects.items():
        selection = select_by_view_clicks(run, VIEW, [tuple(click)], level="coarse")
        sizes[name] = set(selection.indices)
        assert 0 < len(selection.indices) < run.model.num_points
    names = list(sizes)
    for i, a in enumerate(names):  # different objects: (nearly) disjoint selections
        for b in names[i + 1 :]:
            assert len(sizes[a] & sizes[b]) < 0.05 * min(len(sizes[a]), len(sizes[b]))

    name, (click, _) = next(iter(objects.items()))
    selection = select_by_view_clicks(run, VIEW, [tuple(click)], level="coarse")
    path = tmp_path / "sel.json"
    write_selection(path, selection)
    loaded = read_selection(path)
    assert loaded.indices == selection.indices and loaded.prompts["view"] == VIEW

    obj = tmp_path / "object.ply"
    written = export_selection(run, loaded, path, obj)
    ply = read_gaussians_ply(obj)
    assert list(ply) == ply_property_names(run.model.features_rest.shape[1])
    assert len(ply["x"]) == written and 0 < written <= len(selection.indices)
    # the exported Gaussians are exactly model Gaussians from the selection
    means = run.model.means.detach().cpu().numpy()
    picked = means[np.asarray(selection.indices)]
    exported = np.stack([ply["x"], ply["y"], ply["z"]], 1)
    assert np.isin(exported.round(5), picked.round(5)).all()

    rest = tmp_path / "rest.ply"
    kept = export_selection(run, loaded, path, rest, invert=True)
    assert kept <= run.model.num_points - len(selection.indices)
    assert kept > 0.5 * (run.model.num_points - len(selection.indices))


def test_negative_click_removes_an_object(run, objects):
    (a, (click_a, _)), (b, (click_b, _)) = list(objects.items())[:2]
    both = select_by_view_clicks(run, VIEW, [tuple(click_a), tuple(click_b)])
    only_a = select_by_view_clicks(run, VIEW, [tuple(click_a)])
    minus_b = select_by_view_clicks(run, VIEW, [tuple(click_a), tuple(click_b)], [tuple(click_b)])
    assert len(both.indices) > len(only_a.indices)
    assert len(set(minus_b.indices) ^ set(only_a.indices)) < 0.05 * len(only_a.indices)


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


def test_segments_export(run, tmp_path):
    paths = export_segments(run, tmp_path / "segments")
    assert paths[-1].name == "segments_coloured.ply" and len(paths) >= 3
    coloured = read_gaussians_ply(paths[-1])
    assert len(coloured["x"]) > 0.9 * run.model.num_points
    total = sum(len(read_gaussians_ply(p)["x"]) for p in paths[:-1])
    assert 0.5 * run.model.num_points < total <= run.model.num_points


def test_bad_input_ends_in_clear_errors(run, objects, tmp_path):
    with pytest.raises(RunError, match="empty background"):
        select_by_view_clicks(run, VIEW, [(0, 0)])
    with pytest.raises(RunError, match="outside view"):
        select_by_view_clicks(run, VIEW, [(10_000, 5)])
    with pytest.raises(RunError, match="No view named"):
        select_by_view_clicks(run, "nope.png", [(3, 3)])

    click = next(iter(objects.values()))[0]
    selection = select_by_view_clicks(run, VIEW, [tuple(click)])
    path = tmp_path / "sel.json"

    selection.fingerprint = f"{run.model.num_points}:0123456789abcdef"  # another run with as many Gaussians
    write_selection(path, selection)
    with pytest.raises(SelectionError, match="not on this run"):
        export_selection(run, read_selection(path), path, tmp_path / "x.ply")

    selection.fingerprint = run.fingerprint
    selection.indices = []
    write_selection(path, selection)
    with pytest.raises(SelectionError, match="selects no Gaussians"):
        export_selection(run, read_selection(path), path, tmp_path / "x.ply")
    assert not (tmp_path / "x.ply").exists()

    path.write_text("{not json")
    with pytest.raises(SelectionError, match="not a selection file"):
        read_selection(path)
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(SelectionError, match="not a splatseg selection"):
        read_selection(tmp_path / "other.json")


def test_text_query_picks_the_candidate_whose_masks_match(run):
    from splatseg_ns.tools.select import level_index, select_by_text_query

    with pytest.raises(RunError, match="no CLIP embeddings"):
        select_by_text_query(run, "mushroom", encode_text=lambda texts: None)
    index = level_index(run, "coarse")
    k = index.centers.shape[0]
    embeddings = torch.eye(k + 2)[:k]  # candidate j "means" word j
    embeddings[-1] = 0  # a candidate none of whose masks was embedded
    run.model.candidate_clip_coarse = embeddings
    try:
        target = 1 if k > 2 else 0
        word = lambda texts: (torch.eye(k + 2)[target] + 0.1 * torch.eye(k + 2)[k + 1])[None]  # noqa: E731
        selection = select_by_text_query(run, "word one", encode_text=word)
        expected = (index.assignment == target).nonzero().squeeze(-1).tolist()
        assert selection.indices == expected and selection.prompts["text"] == "word one"
    finally:
        run.model.candidate_clip_coarse = torch.zeros(0, 0)


def test_demo_showcase_selects_exports_and_draws(trained_demo_run, demo_scene, tmp_path):
    from PIL import Image

    from splatseg_ns.demo import showcase_selection

    paths = showcase_selection(trained_demo_run, demo_scene, tmp_path / "show")
    assert read_selection(paths["selection"]).indices
    assert len(read_gaussians_ply(paths["object"])["x"]) > 0
    with Image.open(paths["picture"]) as picture:
        strip = np.asarray(picture.convert("RGB"))
    quarter = strip.shape[1] // 4
    alone = strip[:, 3 * quarter :]
    assert (alone < 250).any() and (alone >= 250).mean() > 0.5  # the object, on white
