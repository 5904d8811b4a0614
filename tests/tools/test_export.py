"""`splatseg export` on a real trained demo run: an object, segments, and the errors on bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from splatseg_ns.core.io.ply import ply_property_names, read_gaussians_ply
from splatseg_ns.core.io.selection_file import (
    Selection,
    SelectionError,
    check_selection_matches,
    read_selection,
    write_selection,
)
from splatseg_ns.tools.export import export_segments, export_selection
from splatseg_ns.tools.select import select_by_view_clicks
from splatseg_ns.trained_run import RunError, TrainedRun
from tests.helpers import VIEW, features_with_nan


def nan_run(tmp_path: Path):
    """A TrainedRun, not loaded, with just what export reads before the features: a diverged run's
    fingerprint, config and features."""

    run = TrainedRun.__new__(TrainedRun)
    run.fingerprint, run.config_path, run.step = "100:aaaaaaaaaaaaaaaa", tmp_path / "config.yml", 3999
    run.model = SimpleNamespace(gauss_params={"seg_features": features_with_nan()}, config=SimpleNamespace(sh_degree=0),
                                weak_below=lambda level: 0.5)
    run._click_indices = {}
    return run


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
    report = export_selection(run, loaded, path, obj)
    written = report.written
    ply = read_gaussians_ply(obj)
    assert list(ply) == ply_property_names(run.model.features_rest.shape[1])
    assert len(ply["x"]) == written and 0 < written <= len(selection.indices)
    # the exported Gaussians are exactly model Gaussians from the selection
    means = run.model.means.detach().cpu().numpy()
    picked = means[np.asarray(selection.indices)]
    exported = np.stack([ply["x"], ply["y"], ply["z"]], 1)
    assert np.isin(exported.round(5), picked.round(5)).all()

    rest = tmp_path / "rest.ply"
    kept = export_selection(run, loaded, path, rest, invert=True).written
    assert kept <= run.model.num_points - len(selection.indices)
    assert kept > 0.5 * (run.model.num_points - len(selection.indices))


def test_segments_export(run, tmp_path):
    paths, replaced = export_segments(run, tmp_path / "segments")
    assert replaced == 0
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

    selection.fingerprint = f"{run.model.num_points}:0123456789abcdef"  # this run, before its Gaussians moved
    write_selection(path, selection)
    with pytest.raises(SelectionError, match="made on this run .* when it had other Gaussians"):
        export_selection(run, read_selection(path), path, tmp_path / "x.ply")
    selection.run = "/elsewhere/config.yml"  # another run with as many Gaussians
    write_selection(path, selection)
    with pytest.raises(SelectionError, match="not on this run"):
        export_selection(run, read_selection(path), path, tmp_path / "x.ply")
    selection.run = str(run.config_path)

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


def test_selection_of_another_run_names_both_runs_and_writes_nothing(tmp_path):
    from splatseg_ns.tools.export import export_selection

    path = tmp_path / "sel.json"
    write_selection(path, Selection("/runs/a/config.yml", "10:aaaaaaaaaaaaaaaa", "coarse", [1, 2, 3]))
    selection = read_selection(path)
    with pytest.raises(SelectionError) as err:
        check_selection_matches(selection, "12:bbbbbbbbbbbbbbbb", path)
    assert str(err.value) == (
        f"{path} was made on run /runs/a/config.yml (10 Gaussians), not on this run (12 Gaussians, or the same run "
        "after further training). Use it with the run it was made on (--load-config /runs/a/config.yml), or select "
        "again on this run with `splatseg select --load-config ...`."
    )
    model = SimpleNamespace(gauss_params={}, config=SimpleNamespace(sh_degree=0), weak_below=lambda level: 0.5)
    run = SimpleNamespace(fingerprint="10:cccccccccccccccc", model=model, config_path=Path("/runs/b/config.yml"))  # as many Gaussians, other positions
    output = tmp_path / "object.ply"
    output.write_bytes(b"an earlier export")
    with pytest.raises(SelectionError, match="not on this run"):
        export_selection(run, selection, path, output)
    assert output.read_bytes() == b"an earlier export"
    assert json.loads(path.read_text())["indices"] == [1, 2, 3]


def test_export_refuses_nan_features_naming_the_run_and_writes_nothing(tmp_path):
    from splatseg_ns.tools.export import export_segments, export_selection
    from splatseg_ns.trained_run import RunError

    run = nan_run(tmp_path)
    selection = Selection(str(run.config_path), run.fingerprint, "coarse", [1, 2, 3])
    expected = (rf"^{re.escape(str(run.config_path))}: 2 of 100 Gaussians have NaN/inf segmentation features "
                r"\(the feature training diverged by step 3999\)\. Retrain the features with a lower learning rate")
    with pytest.raises(RunError, match=expected):
        export_selection(run, selection, tmp_path / "sel.json", tmp_path / "object.ply")
    with pytest.raises(RunError, match=expected):
        export_segments(run, tmp_path / "segments")
    with pytest.raises(RunError, match=expected):
        export_segments(run, tmp_path / "segments", method="clustering")
    assert not (tmp_path / "object.ply").exists() and not (tmp_path / "segments").exists()
