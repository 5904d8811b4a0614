"""`splatseg select` on a real trained demo run: clicks, negative clicks, names, clicks on background."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from splatseg_ns.core.segment.metrics import iou
from splatseg_ns.tools.select import select_by_view_clicks
from splatseg_ns.trained_run import RunError
from tests.helpers import VIEW


def test_negative_click_removes_an_object(run, objects):
    (a, (click_a, _)), (b, (click_b, _)) = list(objects.items())[:2]
    both = select_by_view_clicks(run, VIEW, [tuple(click_a), tuple(click_b)])
    only_a = select_by_view_clicks(run, VIEW, [tuple(click_a)])
    minus_b = select_by_view_clicks(run, VIEW, [tuple(click_a), tuple(click_b)], [tuple(click_b)])
    assert len(both.indices) > len(only_a.indices)
    assert len(set(minus_b.indices) ^ set(only_a.indices)) < 0.05 * len(only_a.indices)


def test_text_query_picks_the_candidate_whose_masks_match(run):
    from splatseg_ns.tools.select import select_by_text_query

    with pytest.raises(RunError, match="no CLIP embeddings"):
        select_by_text_query(run, "mushroom", encode_text=lambda texts: None)
    index = run.click_index("coarse")
    k = index.num_candidates
    embeddings = torch.eye(k + 2)[:k]  # candidate j "means" word j
    embeddings[-1] = 0  # a candidate none of whose masks was embedded
    run.model.levels["coarse"].clip = embeddings
    try:
        target = 1 if k > 2 else 0
        word = lambda texts: (torch.eye(k + 2)[target] + 0.1 * torch.eye(k + 2)[k + 1])[None]  # noqa: E731
        selection = select_by_text_query(run, "word one", encode_text=word)
        expected = (index.assignment == target).nonzero().squeeze(-1).tolist()
        assert selection.indices == expected and selection.prompts["text"] == "word one"
    finally:
        run.model.levels["coarse"].clip = torch.zeros(0, 0)


def test_click_on_background_names_the_view_and_says_to_click_an_object():
    from splatseg_ns.core.render.contributors import PixelContributors
    from splatseg_ns.tools.select import check_click_hits
    from splatseg_ns.trained_run import RunError, TrainedRun, View

    camera = SimpleNamespace(width=torch.tensor([32]), height=torch.tensor([24]), distortion_params=None)
    view = View(name="frame_00001.png", split="train", index=0, image_path=Path("images/frame_00001.png"),
                camera=camera, file_size=(32, 24), source_camera=camera)

    def contributors(camera, column, row):  # an object on [5, 15)^2 of opacity 0.9, nothing elsewhere
        weight = 0.9 if 5 <= column < 15 and 5 <= row < 15 else 0.0
        return PixelContributors(torch.tensor([0]), torch.tensor([weight]))

    run = TrainedRun.__new__(TrainedRun)
    run.model = SimpleNamespace(pixel_contributors=contributors)
    check_click_hits(view, (10, 10), run.pixel_contributors(view, 10, 10))
    with pytest.raises(RunError) as err:
        check_click_hits(view, (20.5, 3), run.pixel_contributors(view, 20.5, 3))
    assert str(err.value) == ("Click (20.5, 3) on frame_00001.png hits empty background (rendered opacity 0.00); "
                              "click on the object you want.")
    with pytest.raises(RunError, match=r"Click \(40, 3\) is outside view frame_00001.png \(32x24 pixels\)"):
        run.pixel_contributors(view, 40, 3)


def test_masks_of_a_few_views_select_their_object(run, demo_scene, tmp_path):
    from splatseg_ns.tools.evaluate import render_selection_mask
    from splatseg_ns.tools.make_benchmark import object_masks
    from splatseg_ns.tools.select import select_by_masks

    images = sorted((demo_scene / "images").glob("*.png"))
    name = "mushroom"
    masks_dir = tmp_path / "masks"
    masks_dir.mkdir()
    for image in images[::8]:  # 3 of the 24 views
        mask = object_masks(demo_scene, image, "coarse")[name]
        Image.fromarray((mask * 255).astype(np.uint8)).resize((128, 128), Image.NEAREST).save(masks_dir / image.name)
    selection = select_by_masks(run, masks_dir)
    assert selection.level == "masks" and len(selection.prompts["views"]) == 3
    selected = torch.zeros(run.model.num_points, dtype=torch.bool)
    selected[torch.tensor(selection.indices)] = True
    scores = []
    for image in images[4::8]:  # views that had no mask
        view = run.view(image.name)
        truth = view.mask_to_render(object_masks(demo_scene, image, "coarse")[name])
        scores.append(iou(render_selection_mask(run, view, selected), truth))
    assert min(scores) > 0.8, scores


def test_bad_mask_folders_say_what_is_wrong(run, tmp_path):
    from splatseg_ns.tools.select import select_by_masks

    with pytest.raises(RunError, match="no such folder"):
        select_by_masks(run, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match=r"no masks \(.png or .jpg\)"):
        select_by_masks(run, tmp_path / "empty")
    strangers = tmp_path / "strangers"
    strangers.mkdir()
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(strangers / "holiday.png")
    with pytest.raises(RunError, match=r"none of its masks is named like a view of this run \(holiday.png.*frame_00001"):
        select_by_masks(run, strangers)
    blank = tmp_path / "blank"
    blank.mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(blank / "frame_00001.png")
    with pytest.raises(RunError, match="every mask is empty"):
        select_by_masks(run, blank)
    wide = tmp_path / "wide"
    wide.mkdir()
    Image.fromarray(np.full((32, 64), 255, np.uint8)).save(wide / "frame_00001.png")
    with pytest.raises(RunError, match=r"frame_00001.png: mask is 64x32 but its image frame_00001.png is 64x64"):
        select_by_masks(run, wide)
