"""An export says what it kept and why it dropped the rest: counts per reason, the warning, the JSON beside the PLY."""

from __future__ import annotations

import json

import numpy as np
import torch

from splatseg_ns.core.export.writer import export_selection, report_path
from splatseg_ns.core.io.selection_file import Selection, fingerprint


def scene(num_weak: int, seed: int = 0):
    """A dense blob of 2000 sure members; `num_weak` members unsure of their label (similarity 0.3) in a haze
    beside it, mixed with 4000 unselected background Gaussians; 20 selected floaters far away; 500 unselected
    Gaussians around; splatfacto-like params."""
    rng = np.random.default_rng(seed)
    blob = rng.normal(size=(2000, 3)) * 0.1
    haze = rng.uniform(-0.5, 0.5, size=(num_weak, 3)) + [1.5, 0.0, 0.0]
    floaters = rng.uniform(3.0, 6.0, size=(20, 3)) * rng.choice([-1, 1], size=(20, 3))
    background = rng.uniform(-0.5, 0.5, size=(4000, 3)) + [1.5, 0.0, 0.0]
    rest = rng.uniform(-8, 8, size=(500, 3))
    means = np.concatenate([blob, haze, floaters, background, rest]).astype(np.float32)
    n = len(means)
    params = {"means": torch.from_numpy(means), "scales": torch.full((n, 3), -3.0), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
              "opacities": torch.full((n, 1), 2.0), "features_dc": torch.zeros(n, 3), "features_rest": torch.zeros(n, 0, 3)}
    similarity = torch.full((n,), 0.9)
    similarity[2000 : 2000 + num_weak] = 0.3
    selection = Selection("run/config.yml", fingerprint(params["means"]), "coarse", list(range(2000 + num_weak + 20)))
    return params, similarity, selection


def export(tmp_path, num_weak: int, keep_weak: bool = False):
    params, similarity, selection = scene(num_weak)
    return export_selection(tmp_path / "object.ply", selection, tmp_path / "sel.json", selection.fingerprint, params,
                            sh_degree=0, similarity=lambda: similarity, margin=0.5, keep_weak=keep_weak)


def test_the_report_counts_each_reason_and_stays_quiet_under_a_tenth(tmp_path):
    report = export(tmp_path, num_weak=100)
    assert report.selected == 2120
    assert report.dropped["weak"] == 100
    assert report.dropped.get("outliers", 0) + report.dropped.get("floaters", 0) >= 20  # every planted floater
    assert report.written == report.selected - report.num_dropped
    assert report.num_dropped <= 0.1 * report.selected and report.warning() is None
    assert f"kept {report.written} of 2120 selected; dropped {report.num_dropped} (100 weak" in report.summary()
    saved = json.loads(report_path(tmp_path / "object.ply").read_text())
    assert saved["selected"] == 2120 and saved["written"] == report.written and saved["dropped"] == report.dropped
    assert saved["warning"] is None and report_path(tmp_path / "object.ply").name == "object.export.json"


def test_dropping_more_than_a_tenth_warns_with_the_flag_that_keeps_them(tmp_path):
    report = export(tmp_path, num_weak=400)
    assert report.dropped["weak"] == 400
    assert "--keep-weak" in report.warning() and "dropped" in report.warning()
    assert json.loads(report_path(tmp_path / "object.ply").read_text())["warning"] == report.warning()
    kept = export(tmp_path, num_weak=400, keep_weak=True)
    assert kept.written == kept.selected == 2420 and kept.dropped == {} and kept.warning() is None
    assert "dropped none" in kept.summary()
