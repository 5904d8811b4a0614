"""The speed table: a tiny run measures every part and the table names every size."""

from __future__ import annotations

import math

import pytest

from splatseg_ns.tools.bench import MEASURED_KEYS, format_table, speed_table


@pytest.fixture(scope="module")
def tiny_rows():
    # One thread: on a small shared machine, OpenMP ops with more threads wait for scheduler ticks.
    return speed_table(
        sizes=(1000, 5000), device="cpu", render_resolution=32, repeats=10, budget_s=0.02, export_repeats=1, threads=1
    )


def test_every_measured_key_is_positive_and_finite(tiny_rows):
    assert [row["size"] for row in tiny_rows] == [1000, 5000]
    for row in tiny_rows:
        for key in MEASURED_KEYS:
            value = row[key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (row["size"], key, value)
        assert row["device"] == "cpu" and row["renderer"] == "splatseg rasterize"
        assert row["render_note"] == ""
        # One click selects about N / K Gaussians (features drawn around K candidates).
        assert 0 < row["click_selected"] < row["size"] // 10
        assert row["export_mb"] > row["size"] * 62 * 4 / 1e6


def test_table_names_every_size_and_the_run(tiny_rows):
    table = format_table(tiny_rows)
    for row in tiny_rows:
        assert f"| {row['size']} |" in table
    assert "torch" in table and "load average" in table and "1 threads" in table
    assert sum(line.startswith("|---:") for line in table.splitlines()) == 3  # selection, pixel click, render/export
    assert all(row["pixel_contributor_count"] > 0 for row in tiny_rows)  # the centre pixel is covered


def test_parts_left_out_are_none_and_threads_restored():
    import torch

    before = torch.get_num_threads()
    rows = speed_table(sizes=(2000,), device="cpu", repeats=5, budget_s=0.01, include_render=False,
                       include_export=False, threads=1)  # fmt: skip
    assert torch.get_num_threads() == before
    assert rows[0]["render_ms"] is None and rows[0]["export_s"] is None
    assert rows[0]["click_ms"] > 0
    assert "| 2000 |" in format_table(rows)


def test_render_predicted_over_cap_is_skipped_with_a_note():
    rows = speed_table(sizes=(1000, 100_000), device="cpu", render_resolution=16, repeats=5, budget_s=0.01,
                       render_cap_s=1e-6, include_export=False, threads=1)  # fmt: skip
    assert rows[0]["render_ms"] is not None and "over" in rows[0]["render_note"]
    assert rows[1]["render_ms"] is None and rows[1]["render_note"].startswith("skipped")
    assert "skipped" in format_table(rows)


def test_goal_verdict_leaves_out_rows_whose_floor_contention_inflated(tiny_rows):
    fine, contended = dict(tiny_rows[0]), dict(tiny_rows[1])
    fine.update(threads=2, click_ms=0.1, floor_compare_ms=0.08, floor_compare_1thread_ms=0.08, ratio_vs_compare=1.25)
    contended.update(
        threads=2, click_ms=0.1, floor_compare_ms=8.0, floor_compare_1thread_ms=0.5, ratio_vs_compare=0.0125
    )
    table = format_table([fine, contended])
    goal = next(line for line in table.splitlines() if line.startswith("Goal"))
    assert "met at 1000" in goal and "not judged at 5000" in goal and "missed" not in goal
    assert "--threads 1" in table
    assert "met at" not in format_table([contended]).split("Goal", 1)[1].splitlines()[0]
