"""The speed table of splatseg's interactive path: click -> Gaussians, text -> candidates, export.

Measured in one run on whatever device is present (CUDA if available, else CPU), on synthetic
data shaped like a trained scene: per-Gaussian features [N, 24] drawn around `num_candidates`
random unit global candidates (Click-Gaussian, arXiv 2407.11793, Sec. 3.4: a click picks the
nearest candidate and selects the Gaussians assigned to it). For each number of Gaussians N:

- precompute: `selection.precompute_click_index` per level (coarse and fine: the assignment plus
  the click index), a one-off per level and per candidate refresh, so reported apart from the click;
- click: `selection.ClickIndex.select` (fine level; what `select_prompts` runs once the index
  is built, and what the select tool calls) for one positive click, and for one positive plus one
  negative click, given the clicked pixel's feature. The feature render at the click is NOT
  included; it is the `render` column;
- its floors, in the same run and on the same tensors: one pass over the N x D feature matrix
  (`features @ v`, what any raw-feature selection must at least do) and one compare over the
  precomputed assignment (`assignment == k`, what a lookup must at least do). The click's target
  is to stay within 1.5x of the compare floor (and under 1 ms at 1M Gaussians on a GPU);
- render: one forward 24-channel feature render of a synthetic scene of N Gaussians under
  `torch.no_grad` with the device's rasteriser (`gsplat.rasterization` on CUDA when importable,
  else splatseg's pure-torch `rasterize`); sizes predicted to take longer than a cap are skipped
  with a note, so a CPU run stays short;
- text: ranking the candidates' CLIP embeddings against a text embedding
  (`selection.rank_candidates_by_text`), the CLIP text encoder itself excluded;
- export: `ply.write_gaussians_ply` of N Gaussians with SH degree 3 (45 f_rest floats) into a
  temporary folder, against its floor: writing the same number of bytes with one
  `ndarray.tofile`. Neither syncs to disk (the exporter does not either), so both measure the
  write into the page cache and the ratio is the exporter's overhead beyond I/O.

Timing: host `time.perf_counter` around each call with `torch.cuda.synchronize` before and after
on CUDA (the latency a user sees, launch overhead included, for the click and its floors alike),
warm-up calls first, the median of many repeats (until `repeats` or a time budget per
measurement). Relies on torch and numpy only; no nerfstudio, gsplat optional.
"""

from __future__ import annotations

import datetime
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from splatseg_ns.core.segment.selection import rank_candidates_by_text
from splatseg_ns.tools.bench.measures import (
    export_timings,
    pixel_click_timings,
    rasterizer,
    render_timing,
    selection_timings,
)
from splatseg_ns.tools.bench.synthetic import synthetic_features
from splatseg_ns.tools.bench.table import format_table
from splatseg_ns.tools.bench.timing import Timer, device_name, load_average, torch_threads

__all__ = ["DEFAULT_SIZES", "QUICK_SIZES", "MEASURED_KEYS", "speed_table", "format_table"]

DEFAULT_SIZES = (100_000, 1_000_000, 3_000_000)
QUICK_SIZES = (100_000, 1_000_000)
MEASURED_KEYS = (
    "precompute_s", "precompute_coarse_s", "click_ms", "click_pos_neg_ms", "floor_matvec_ms",
    "floor_compare_ms", "ratio_vs_compare", "ratio_pos_neg_vs_compare", "ratio_vs_matvec",
    "text_ms", "render_ms", "export_s", "export_floor_s", "export_ratio",
    "pixel_click_ms", "pixel_contributors_ms", "floor_positions_ms", "pixel_click_ratio",
)  # fmt: skip
"""Keys of a row that hold a measured (positive, finite) number when their part was run."""


def speed_table(
    sizes: Optional[Sequence[int]] = None,
    device: Optional[str] = None,
    feature_dim: int = 24,
    coarse_dim: int = 12,
    num_candidates: int = 200,
    clip_dim: int = 512,
    repeats: int = 200,
    render_resolution: Optional[int] = None,
    click_resolution: int = 1024,
    include_render: bool = True,
    include_export: bool = True,
    quick: bool = False,
    budget_s: float = 0.5,
    render_cap_s: float = 15.0,
    export_repeats: int = 5,
    threads: Optional[int] = None,
    seed: int = 0,
) -> List[Dict]:
    """One row of timings per number of Gaussians, all measured in this one call.

    Args:
        sizes: Numbers of Gaussians. None: DEFAULT_SIZES (100k, 1M, 3M), or QUICK_SIZES
            (100k, 1M) with `quick`.
        device: "cuda", "cpu", ...; None picks CUDA when available, else the CPU.
        feature_dim: Per-Gaussian feature channels (paper: 24). The click is on all of them
            (the fine level); the coarse level is the first `coarse_dim`.
        coarse_dim: Channels of the coarse level (paper: 12).
        num_candidates: Global candidates per level (K), and CLIP-embedded candidates ranked.
        clip_dim: CLIP embedding size (ViT-B/16: 512).
        repeats: Most timed calls per sub-second measurement (median reported); fewer when
            `budget_s` runs out first, at least 5.
        render_resolution: Square render size; None: 128 on the CPU, 512 on CUDA.
        click_resolution: Square size of the view clicked in (the viewer's render, not the bench's).
        include_render, include_export: Measure the feature render / the PLY export.
        quick: QUICK_SIZES (when `sizes` is None), a smaller time budget and one export repeat.
        budget_s: Seconds of timed calls per measurement before stopping early. Default 0.5.
        render_cap_s: A size whose render is predicted (linearly in N from the previous size)
            to exceed this many seconds is skipped with a note; a render whose warm-up call
            alone exceeds it is reported from that one call. Default 15.
        export_repeats: Timed PLY writes (and floor writes) per size; median reported.
        threads: torch CPU threads for this run (restored afterwards); None keeps the current
            setting. On a small machine shared with other processes, OpenMP/MKL ops with 2+
            threads can take scheduler ticks (~4 ms) instead of microseconds: compare with 1.
        seed: Seed of the synthetic data.

    Returns rows with keys: size, device, device_name, torch_version, threads, date,
    load_avg_start, load_avg_end, feature_dim, num_candidates, click_selected, click_repeats,
    floor_compare_1thread_ms (CPU only: the contention check), the MEASURED_KEYS (None where
    a part was not run or skipped), render_resolution, renderer, render_note, export_mb.
    """
    with torch_threads(threads):
        dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        sizes = tuple(sizes) if sizes is not None else (QUICK_SIZES if quick else DEFAULT_SIZES)
        if quick:
            budget_s, export_repeats = min(budget_s, 0.2), 1
        if render_resolution is None:
            render_resolution = 512 if dev.type == "cuda" else 128
        render_fn, renderer = rasterizer(dev)
        env = {
            "device": str(dev),
            "device_name": device_name(dev),
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_avg_start": load_average(),
        }
        timer = Timer(dev, repeats, budget_s)
        gen = torch.Generator(device=dev).manual_seed(seed)
        centers = F.normalize(torch.randn(num_candidates, feature_dim, generator=gen, device=dev), dim=-1)
        coarse_centers = F.normalize(centers[:, :coarse_dim], dim=-1)
        clip = F.normalize(torch.randn(num_candidates, clip_dim, generator=gen, device=dev), dim=-1)
        text = F.normalize(torch.randn(clip_dim, generator=gen, device=dev), dim=0)

        rows: List[Dict] = []
        last_render: Optional[Tuple[int, float]] = None  # (size, seconds) of the last measured render
        for n in sizes:
            row: Dict = {"size": int(n), **env, "feature_dim": feature_dim, "num_candidates": num_candidates}
            features = synthetic_features(n, centers, gen)
            row.update(selection_timings(timer, features, centers, coarse_centers, coarse_dim, gen))
            row.update(pixel_click_timings(timer, features, centers, click_resolution, gen))
            row["click_resolution"] = click_resolution
            row["text_ms"] = timer.median_s(lambda: rank_candidates_by_text(text, clip)) * 1e3
            row.update(render_ms=None, render_resolution=render_resolution, renderer=renderer, render_note="")
            if include_render:
                predicted = None if last_render is None else last_render[1] * n / last_render[0]
                if predicted is not None and predicted > render_cap_s:
                    row["render_note"] = f"skipped: ~{predicted:.0f} s predicted > {render_cap_s:.0f} s cap"
                else:
                    seconds, note = render_timing(timer, render_fn, features, render_resolution, gen, render_cap_s)
                    row.update(render_ms=seconds * 1e3, render_note=note)
                    last_render = (n, seconds)
            else:
                row["render_note"] = "not run"
            del features
            row.update(export_s=None, export_floor_s=None, export_ratio=None, export_mb=None)
            if include_export:
                row.update(export_timings(n, export_repeats, seed))
            rows.append(row)
        load_end = load_average()
        for row in rows:
            row["load_avg_end"] = load_end
        return rows
