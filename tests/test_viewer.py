"""The viewer panel without a browser: clicks, levels, displays, saving and exporting, names."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from splatseg_ns.core.io.selection_file import read_selection
from splatseg_ns.core.segment.selection import select_candidates
from splatseg_ns.tools.export import export_selection
from splatseg_ns.tools.make_benchmark import deepest_pixel, object_masks
from splatseg_ns.tools.select import select_by_view_clicks
from tests.helpers import VIEW


@pytest.fixture()
def tools(run):
    """The run's panel, bound to the run, back to its defaults after each test."""
    panel = run.model.splatseg
    panel.bind(run.config_path, run.pipeline)
    defaults = {name: element.value for name, element in elements(run).items() if hasattr(element, "value")}
    yield panel
    for name, value in defaults.items():
        elements(run)[name].value = value
    panel.clear()


def elements(run):
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerElement

    return {element.name: element for _, element in parse_object(run.pipeline, ViewerElement, "Custom Elements")}


@pytest.fixture(scope="module")
def clicks(demo_scene: Path):
    """(x, y) deepest inside each object of the view, largest object first."""
    masks = object_masks(demo_scene, demo_scene / "images" / VIEW, "coarse")
    masks = sorted((m for m in masks.values() if m.sum() > 20), key=lambda m: -m.sum())
    return [tuple(deepest_pixel(m)) for m in masks]


def indices(mask: torch.Tensor):
    return mask.nonzero().squeeze(-1).cpu().tolist()


def coverage_alone(run, view, keep: torch.Tensor) -> torch.Tensor:
    """[H, W] accumulated opacity of the Gaussians in `keep` rendered by themselves."""
    from splatseg_ns.model import render_values

    model = run.model
    gaussians = {name: model.gauss_params[name][keep] for name in ("means", "quats", "scales", "opacities")}
    ones = torch.ones(int(keep.sum()), 1, device=model.device)
    return render_values(gaussians, view.camera, ones, model.config.rasterize_mode, model.config.rasterizer)[..., 0]


def test_nerfstudio_finds_the_panel_grouped_and_in_order(run):
    from nerfstudio.viewer.utils import parse_object
    from nerfstudio.viewer.viewer_elements import ViewerControl, ViewerElement

    found = parse_object(run.pipeline, ViewerElement, "Custom Elements")
    paths = [path.rsplit("/", 1)[0] for path, _ in found]
    names = [element.name for _, element in found]
    assert names[0] == "Click to select" and len(set(names)) == len(names)
    assert paths[0] == "Custom Elements/model/splatseg/Clicks & names"
    folders = list(dict.fromkeys(paths))
    assert [f.rsplit("/", 1)[1] for f in folders] == ["Clicks & names", "Display", "Export"]
    for expected in ("Level", "Click mode", "Similarity threshold", "Name", "Clear selection", "Click time", "Show",
                     "Highlight selection", "Save selection", "Export command", "Invert", "Export PLY"):
        assert expected in names
    assert names.index("Level") < names.index("Similarity threshold") < names.index("Status")
    controls = parse_object(run.pipeline, ViewerControl, "Custom Elements")
    assert [e for _, e in controls] == [run.model.splatseg.viewer_control]
    assert not any(k.startswith("splatseg") for k in run.model.state_dict())  # the panel adds no state


def test_a_click_selects_what_splatseg_select_selects(run, tools, clicks):
    view = run.view(VIEW)
    for x, y in clicks:
        tools.clear()
        assert tools.click_pixel(view.camera, x, y)
        expected = select_by_view_clicks(run, VIEW, [(x, y)], level="coarse")
        assert indices(tools.selected()) == expected.indices and expected.indices
        assert f"{len(expected.indices)} of {run.model.num_points}" in elements(run)["Status"].value
        features_ms, selection_ms = tools.last_click_ms
        assert features_ms > 0 and selection_ms > 0
        assert "ms" in elements(run)["Click time"].value


def test_add_subtract_level_threshold_and_clear(run, tools, clicks):
    view = run.view(VIEW)
    a, b = clicks[:2]
    tools.click_pixel(view.camera, *a)
    elements(run)["Click mode"].value = "add"
    tools.click_pixel(view.camera, *b)
    assert indices(tools.selected()) == select_by_view_clicks(run, VIEW, [a, b]).indices
    elements(run)["Click mode"].value = "subtract"
    tools.click_pixel(view.camera, *b)
    assert indices(tools.selected()) == select_by_view_clicks(run, VIEW, [a, b], [b]).indices

    elements(run)["Level"].value = "fine"  # the clicks so far are re-applied at the other level
    assert indices(tools.selected()) == select_by_view_clicks(run, VIEW, [a, b], [b], level="fine").indices
    elements(run)["Similarity threshold"].value = 0.9
    assert indices(tools.selected()) == select_by_view_clicks(run, VIEW, [a, b], [b], "fine", 0.9).indices

    tools.clear()
    assert not tools.has_prompts() and not tools.selected().any()
    assert "Nothing selected" in elements(run)["Status"].value


def test_a_click_on_background_selects_nothing(run, tools):
    view = run.view(VIEW)
    assert not tools.click_pixel(view.camera, 0, 0)
    assert "background" in elements(run)["Status"].value
    assert not tools.has_prompts() and not tools.selected().any()


def test_display_modes_change_only_the_selection_and_never_the_gaussians(run, tools, clicks):
    from splatseg_ns.tools.evaluate import render_selection_mask

    view = run.view(VIEW)
    before = {name: value.detach().clone() for name, value in run.model.gauss_params.items()}
    scene = run.render(view)["rgb"]
    tools.click_pixel(view.camera, *clicks[0])
    selected = tools.selected()
    weight = run.model.render_values(view.camera, selected.float()[:, None])[..., 0]
    inside = torch.from_numpy(render_selection_mask(run, view, selected))
    outside = weight < 0.01  # where the selection adds under 1% of the colour
    assert inside.sum() > 20 and outside.sum() > 20
    show = elements(run)["Show"]

    highlighted = tools.render(view.camera)["rgb"]  # "everything", highlight on
    assert (highlighted - scene).abs()[inside].mean() > 0.05
    assert torch.allclose(highlighted[outside], scene[outside], atol=0.01)
    elements(run)["Highlight selection"].value = False
    assert torch.allclose(tools.render(view.camera)["rgb"], scene, atol=1e-6)

    for mode, shown in (("selection only", selected), ("without selection", ~selected)):
        show.value = mode
        outputs = tools.render(view.camera)
        alone = coverage_alone(run, view, shown)  # those Gaussians rendered on their own, without the panel
        assert torch.allclose(outputs["accumulation"][..., 0], alone, atol=1e-4)
        assert (outputs["rgb"][alone < 0.01] - outputs["background"][0, 0]).abs().max() < 0.02
    show.value = "selection only"
    assert (tools.render(view.camera)["rgb"] - scene).abs()[inside].mean() < 0.1  # the object was in front
    show.value = "without selection"
    assert (tools.render(view.camera)["rgb"] - scene).abs()[inside].mean() > 0.1

    for mode in ("segments", "feature PCA"):
        show.value = mode
        first, second = tools.render(view.camera)["rgb"], tools.render(view.camera)["rgb"]
        assert torch.equal(first, second)  # a fixed colour per Gaussian: no flicker between frames
        assert (first - scene).abs().mean() > 0.02

    # Outside the viewer (evaluation, the command-line tools) the scene renders as trained, whatever the panel shows.
    assert torch.equal(run.render(view)["rgb"], scene)
    for name, value in run.model.gauss_params.items():
        assert torch.equal(value.detach(), before[name]), name


def test_save_selection_is_accepted_by_export(run, tools, clicks, tmp_path):
    view = run.view(VIEW)
    assert tools.save_selection() is None  # nothing selected yet
    tools.click_pixel(view.camera, *clicks[0])
    elements(run)["Selection file"].value = "viewer_test_selection"
    path = tools.save_selection()
    try:
        assert path == run.config_path.parent / "viewer_test_selection.json"
        selection = read_selection(path)
        assert selection.indices == indices(tools.selected()) and selection.level == "coarse"
        assert selection.fingerprint == run.fingerprint and selection.prompts["source"] == "viewer"
        command = elements(run)["Export command"].value
        assert command.startswith("splatseg export --load-config ") and str(path) in command
        report = export_selection(run, selection, path, tmp_path / "object.ply")
        assert 0 < report.written <= len(selection.indices)

        ply = tools.export_ply()
        assert ply == path.with_suffix(".ply") and ply.stat().st_size > 0
        said = elements(run)["Written"].value
        assert f"kept {report.written} of {len(selection.indices)} selected" in said  # the same export as the CLI's
        elements(run)["Keep weak members"].value = True
        tools.export_ply()
        assert f"kept {len(selection.indices)} of {len(selection.indices)} selected; dropped none" in \
            elements(run)["Written"].value
        assert "--keep-weak" in elements(run)["Export command"].value
        elements(run)["Invert"].value = True
        without = tools.export_ply()
        assert without.name == "viewer_test_selection_without.ply" and without.exists()
        assert without.name in elements(run)["Written"].value
    finally:
        for leftover in run.config_path.parent.glob("viewer_test_selection*"):
            leftover.unlink()


def test_select_by_name(run, tools, clicks):
    assert not tools.select_by_name("mushroom")  # the demo run was trained without text queries
    assert "no CLIP embeddings" in elements(run)["Status"].value

    model = run.model
    centers = model.levels["coarse"].centers
    saved = model.levels["coarse"].clip
    try:  # give the candidates embeddings, and "mushroom" the embedding of candidate 2
        model.levels["coarse"].clip = torch.nn.functional.normalize(torch.randn(centers.shape[0], 8), dim=-1)
        tools.bind(run.config_path, run.pipeline, encode_text=lambda texts: model.levels["coarse"].clip[2:3] * 3)
        assert tools.select_by_name("mushroom")
        index = run.click_index("coarse")
        expected = select_candidates(index.assignment, torch.tensor([2]), index.num_candidates)
        assert torch.equal(tools.selected(), expected) and expected.any()
        # a subtracting click on another object leaves the named one
        elements(run)["Click mode"].value = "subtract"
        tools.click_pixel(run.view(VIEW).camera, *clicks[0])
        assert not (tools.selected() & ~expected).any()
    finally:
        model.levels["coarse"].clip = saved
        tools.bind(run.config_path, run.pipeline)
