"""The speed table: a tiny run measures every part and the table names every size."""

from __future__ import annotations

import math

import pytest

from splatseg_ns.bench import MEASURED_KEYS, format_table, speed_table


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
    assert sum(line.startswith("|---:") for line in table.splitlines()) == 2  # selection, render/export


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
