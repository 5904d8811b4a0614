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

import contextlib
import datetime
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from splatseg_ns.core.contributors import GaussianGrid, click_candidate, pixel_contributors
from splatseg_ns.core.ply import write_gaussians_ply
from splatseg_ns.core.rasterize import rasterize as torch_rasterize
from splatseg_ns.core.selection import precompute_click_index, rank_candidates_by_text

DEFAULT_SIZES = (100_000, 1_000_000, 3_000_000)
QUICK_SIZES = (100_000, 1_000_000)
SH_REST_BASES = 15  # SH degree 3: (3 + 1)^2 - 1 higher bases per colour channel, 45 floats
MEASURED_KEYS = (
    "precompute_s", "precompute_coarse_s", "click_ms", "click_pos_neg_ms", "floor_matvec_ms",
    "floor_compare_ms", "ratio_vs_compare", "ratio_pos_neg_vs_compare", "ratio_vs_matvec",
    "text_ms", "render_ms", "export_s", "export_floor_s", "export_ratio",
    "pixel_click_ms", "pixel_contributors_ms", "floor_positions_ms", "pixel_click_ratio",
)  # fmt: skip
"""Keys of a row that hold a measured (positive, finite) number when their part was run."""

_GENERATE_CHUNK = 1 << 18
_FEATURE_NOISE = 0.05  # per channel: |noise| ~ 0.25 on unit centres, so most Gaussians keep their centre


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
    with _torch_threads(threads):
        dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        sizes = tuple(sizes) if sizes is not None else (QUICK_SIZES if quick else DEFAULT_SIZES)
        if quick:
            budget_s, export_repeats = min(budget_s, 0.2), 1
        if render_resolution is None:
            render_resolution = 512 if dev.type == "cuda" else 128
        render_fn, renderer = _rasterizer(dev)
        env = {
            "device": str(dev),
            "device_name": _device_name(dev),
            "torch_version": torch.__version__,
            "threads": torch.get_num_threads(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "load_avg_start": _load_average(),
        }
        timer = _Timer(dev, repeats, budget_s)
        gen = torch.Generator(device=dev).manual_seed(seed)
        centers = F.normalize(torch.randn(num_candidates, feature_dim, generator=gen, device=dev), dim=-1)
        coarse_centers = F.normalize(centers[:, :coarse_dim], dim=-1)
        clip = F.normalize(torch.randn(num_candidates, clip_dim, generator=gen, device=dev), dim=-1)
        text = F.normalize(torch.randn(clip_dim, generator=gen, device=dev), dim=0)

        rows: List[Dict] = []
        last_render: Optional[Tuple[int, float]] = None  # (size, seconds) of the last measured render
        for n in sizes:
            row: Dict = {"size": int(n), **env, "feature_dim": feature_dim, "num_candidates": num_candidates}
            features = _synthetic_features(n, centers, gen)
            row.update(_selection_timings(timer, features, centers, coarse_centers, coarse_dim, gen))
            row.update(_pixel_click_timings(timer, features, centers, click_resolution, gen))
            row["click_resolution"] = click_resolution
            row["text_ms"] = timer.median_s(lambda: rank_candidates_by_text(text, clip)) * 1e3
            row.update(render_ms=None, render_resolution=render_resolution, renderer=renderer, render_note="")
            if include_render:
                predicted = None if last_render is None else last_render[1] * n / last_render[0]
                if predicted is not None and predicted > render_cap_s:
                    row["render_note"] = f"skipped: ~{predicted:.0f} s predicted > {render_cap_s:.0f} s cap"
                else:
                    seconds, note = _render_timing(timer, render_fn, features, render_resolution, gen, render_cap_s)
                    row.update(render_ms=seconds * 1e3, render_note=note)
                    last_render = (n, seconds)
            else:
                row["render_note"] = "not run"
            del features
            row.update(export_s=None, export_floor_s=None, export_ratio=None, export_mb=None)
            if include_export:
                row.update(_export_timings(n, export_repeats, seed))
            rows.append(row)
        load_end = _load_average()
        for row in rows:
            row["load_avg_end"] = load_end
        return rows


def format_table(rows: List[Dict]) -> str:
    """Markdown: a header line (device, torch, threads, load, date), the selection table, the
    render/export table and notes on what each column includes."""
    if not rows:
        return "(no rows)"
    first = rows[0]
    lines = [
        f"splatseg speed table - {first['device']} ({first['device_name']}), torch "
        f"{first['torch_version']}, {first['threads']} threads, load average (1/5/15 min) "
        f"{_fmt_load(first['load_avg_start'])} at start, {_fmt_load(first['load_avg_end'])} at end, "
        f"{first['date']}; K = {first['num_candidates']} candidates, D = {first['feature_dim']}",
        "",
        "| Gaussians | precompute fine / coarse (s) | click (ms) | click +1 neg (ms) "
        "| floor: assignment == k (ms) | floor: features @ v (ms) | click / compare "
        "| click+neg / compare | click / matvec | text query (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['precompute_s']:.3g} / {r['precompute_coarse_s']:.3g} "
            f"| {r['click_ms']:.3f} | {r['click_pos_neg_ms']:.3f} | {r['floor_compare_ms']:.3f} "
            f"| {r['floor_matvec_ms']:.3f} | {r['ratio_vs_compare']:.2f}x "
            f"| {r['ratio_pos_neg_vs_compare']:.2f}x | {r['ratio_vs_matvec']:.2f}x | {r['text_ms']:.3f} |"
        )
    lines += [
        "",
        f"| Gaussians | click from the pixel @ {first['click_resolution']}^2 (ms) | its contributors (ms) "
        "| contributors found | floor: means @ axis (ms) | click / floor |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['pixel_click_ms']:.2f} | {r['pixel_contributors_ms']:.2f} "
            f"| {r['pixel_contributor_count']} | {r['floor_positions_ms']:.2f} | {r['pixel_click_ratio']:.2f}x |"
        )
    lines += [
        "",
        f"| Gaussians | feature render 24 ch @ {first['render_resolution']}^2, {first['renderer']} (ms) "
        "| PLY export, SH 3 (s) | floor: tofile same bytes (s) | export / floor | file (MB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        render = _fmt(r["render_ms"], ".1f") + (f" ({r['render_note']})" if r["render_note"] else "")
        lines.append(
            f"| {r['size']} | {render} | {_fmt(r['export_s'], '.3g')} | {_fmt(r['export_floor_s'], '.3g')} "
            f"| {_fmt(r['export_ratio'], '.2f', 'x')} | {_fmt(r['export_mb'], '.1f')} |"
        )
    contended = [
        f"{r['size']} ({r['floor_compare_ms']:.2f} ms with {r['threads']} threads, "
        f"{r['floor_compare_1thread_ms']:.2f} ms with 1)"
        for r in rows
        if _contended(r)
    ]
    judged = [r for r in rows if not _contended(r)]
    met = [f"{r['size']}" for r in judged if r["ratio_vs_compare"] <= 1.5]
    missed = [f"{r['size']} ({r['ratio_vs_compare']:.2f}x)" for r in judged if r["ratio_vs_compare"] > 1.5]
    parts = [f"met at {', '.join(met) or 'no size'}"] if judged else []
    if missed:
        parts.append(f"missed at {', '.join(missed)}")
    if contended:
        parts.append(f"not judged at {', '.join(contended)}: the compare floor was inflated by thread contention")
    verdict = "; ".join(parts)
    lines += [
        "",
        f"Goal click <= 1.5x the compare floor: {verdict}.",
        "Click = `ClickIndex.select` (fine level, index built once: `select_prompts`' hot path) given the "
        "clicked pixel's feature, median of "
        f"~{first['click_repeats']} calls; the feature render at the click is not included (render column). "
        "Click from the pixel = what a click costs end to end without a render: the Gaussians that blend into "
        "the clicked pixel (exactly as the rasteriser would, through the grid built once per scene), their "
        "candidate and the selection. "
        "Text query = ranking the candidates' CLIP embeddings; the CLIP text encoder is not included. "
        "Export and its floor write to the page cache (no fsync). Wall-clock medians after warm-up"
        + ("; torch.cuda.synchronize around every call." if first["device"].startswith("cuda") else "."),
    ]
    if any(_contended(r) for r in rows):
        lines.append(
            "Thread contention: with other load on this machine, torch's OpenMP threads wait for scheduler "
            "ticks, so multi-threaded ops (the floors, the render) are inflated; rerun with --threads 1."
        )
    return "\n".join(lines)


def _contended(row: Dict) -> bool:
    """Whether this row's multi-threaded compare took over 2x its one-thread time: other load
    is descheduling torch's OpenMP threads, so the floors (and the render) are inflated."""
    single = row.get("floor_compare_1thread_ms")
    return single is not None and row["threads"] > 1 and row["floor_compare_ms"] > 2 * single


@contextlib.contextmanager
def _torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Run with `threads` torch CPU threads (None: unchanged), restoring the setting after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class _Timer:
    """Median wall time of a callable on one device, with warm-up and a time budget."""

    def __init__(self, device: torch.device, repeats: int, budget_s: float, min_repeats: int = 5):
        self.device, self.repeats, self.budget_s, self.min_repeats = device, repeats, budget_s, min_repeats
        self.last_count = 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def median_s(self, fn: Callable[[], object], warmup: int = 3, min_repeats: Optional[int] = None) -> float:
        for _ in range(warmup):
            self.once(fn)
        floor = self.min_repeats if min_repeats is None else min_repeats
        times: List[float] = []
        while len(times) < max(self.repeats, floor):
            times.append(self.once(fn))
            if len(times) >= floor and sum(times) > self.budget_s:
                break
        self.last_count = len(times)
        return statistics.median(times)


@torch.no_grad()
def _synthetic_features(n: int, centers: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[n, D] features around random candidates, filled in chunks (no [n, D] temporaries)."""
    features = torch.empty(n, centers.shape[1], device=centers.device)
    for start in range(0, n, _GENERATE_CHUNK):
        m = min(_GENERATE_CHUNK, n - start)
        labels = torch.randint(0, centers.shape[0], (m,), generator=gen, device=centers.device)
        noise = torch.randn(m, centers.shape[1], generator=gen, device=centers.device)
        features[start : start + m] = centers[labels] + _FEATURE_NOISE * noise
    return features


@torch.no_grad()
def _selection_timings(
    timer: _Timer,
    features: torch.Tensor,
    centers: torch.Tensor,
    coarse_centers: torch.Tensor,
    coarse_dim: int,
    gen: torch.Generator,
) -> Dict:
    """Precompute per level, the click (fine level) with and without a negative, and its floors."""
    out: Dict = {}
    # The precompute is a one-off: one call each, the cold cost a user waits for.
    out["precompute_coarse_s"] = timer.once(lambda: precompute_click_index(features[:, :coarse_dim], coarse_centers))
    timer.sync()
    start = time.perf_counter()
    index = precompute_click_index(features, centers)
    timer.sync()
    out["precompute_s"] = time.perf_counter() - start
    assignment = index.assignment

    k_pos, k_neg = 3 % centers.shape[0], 7 % centers.shape[0]
    # A clicked pixel's rendered feature: near a candidate, not on it.
    noise = torch.randn(2, centers.shape[1], generator=gen, device=centers.device)
    positive = (centers[k_pos] + _FEATURE_NOISE * noise[0])[None]
    negative = (centers[k_neg] + _FEATURE_NOISE * noise[1])[None]
    v = F.normalize(positive[0], dim=0)

    out["click_ms"] = timer.median_s(lambda: index.select(positive)) * 1e3
    out["click_repeats"] = timer.last_count
    out["click_pos_neg_ms"] = timer.median_s(lambda: index.select(positive, negative)) * 1e3
    out["floor_compare_ms"] = timer.median_s(lambda: assignment == k_pos) * 1e3
    # The same compare on one thread: far faster means other load is descheduling our threads.
    out["floor_compare_1thread_ms"] = None if features.device.type != "cpu" else out["floor_compare_ms"]
    if features.device.type == "cpu" and torch.get_num_threads() > 1:
        with _torch_threads(1):
            out["floor_compare_1thread_ms"] = timer.median_s(lambda: assignment == k_pos) * 1e3
    out["floor_matvec_ms"] = timer.median_s(lambda: features @ v) * 1e3
    out["click_selected"] = int(index.select(positive).sum())
    out["ratio_vs_compare"] = out["click_ms"] / out["floor_compare_ms"]
    out["ratio_pos_neg_vs_compare"] = out["click_pos_neg_ms"] / out["floor_compare_ms"]
    out["ratio_vs_matvec"] = out["click_ms"] / out["floor_matvec_ms"]
    return out


@torch.no_grad()
def _synthetic_scene(n: int, resolution: int, gen: torch.Generator, device: torch.device) -> Dict[str, torch.Tensor]:
    """Gaussians on surfaces, as a reconstruction has them: the spheres of eight objects 2 to 4 units in front
    of a pinhole camera with a 90-degree field of view, and a wall behind them; sizes scaling as N^(-1/2)
    (2 cm at 100k), as a denser reconstruction of the same surfaces would; random orientations, opacities
    0.05-0.95."""
    spheres = torch.rand(8, 4, generator=gen, device=device) * torch.tensor([1.6, 1.6, 1.6, 0.3], device=device)
    spheres += torch.tensor([-0.8, -0.8, 2.2, 0.25], device=device)
    on_wall = torch.rand(n, generator=gen, device=device) < 0.3
    which = torch.randint(0, 8, (n,), generator=gen, device=device)
    directions = F.normalize(torch.randn(n, 3, generator=gen, device=device), dim=-1)
    means = spheres[which, :3] + spheres[which, 3:] * directions
    wall = torch.rand(n, 3, generator=gen, device=device) * torch.tensor([5.0, 5.0, 0.0], device=device)
    means = torch.where(on_wall[:, None], wall + torch.tensor([-2.5, -2.5, 4.5], device=device), means)
    quats = torch.randn(n, 4, generator=gen, device=device)
    size = 0.02 * (1e5 / n) ** 0.5
    scales = torch.empty(n, 3, device=device).uniform_(0.5 * size, 1.5 * size, generator=gen)
    opacities = torch.rand(n, generator=gen, device=device) * 0.9 + 0.05
    f = resolution / 2.0
    K = torch.tensor([[f, 0.0, resolution / 2.0], [0.0, f, resolution / 2.0], [0.0, 0.0, 1.0]], device=device)
    return {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "K": K,
            "viewmat": torch.eye(4, device=device)}


@torch.no_grad()
def _pixel_click_timings(timer: _Timer, features: torch.Tensor, centers: torch.Tensor, resolution: int,
                         gen: torch.Generator) -> Dict:
    """A click from its pixel to the selection (the pixel's contributors, their candidate, the gather: what
    `splatseg select` and the viewer do per click, with the scene's `GaussianGrid` built once beforehand),
    against one pass over the Gaussians' positions (their depths along the camera's axis, `means @ axis`)."""
    scene = _synthetic_scene(features.shape[0], resolution, gen, features.device)
    index = precompute_click_index(features, centers)
    grid = GaussianGrid.build(scene["means"], scene["scales"].amax(dim=-1))  # once per scene: not the click's
    pixel = resolution // 2

    def contributors():
        return pixel_contributors(scene["means"], scene["quats"], scene["scales"], scene["opacities"], scene["viewmat"],
                                  scene["K"], resolution, resolution, pixel, pixel, grid=grid)

    def click():
        found = contributors()
        candidate, _ = click_candidate(found, index.assignment, index.num_candidates)
        return index.select(found.blend(features)[None], click_ids=torch.tensor([candidate], device=features.device))

    axis = scene["viewmat"][2, :3]
    out = {"pixel_click_ms": timer.median_s(click) * 1e3, "pixel_contributors_ms": timer.median_s(contributors) * 1e3,
           "floor_positions_ms": timer.median_s(lambda: scene["means"] @ axis) * 1e3,
           "pixel_contributor_count": int(contributors().ids.numel())}
    out["pixel_click_ratio"] = out["pixel_click_ms"] / out["floor_positions_ms"]
    return out


def _rasterizer(device: torch.device) -> Tuple[Callable, str]:
    """gsplat's CUDA rasteriser when it can run here, else splatseg's pure-torch one."""
    if device.type == "cuda":
        try:
            from gsplat import rasterization

            return rasterization, "gsplat.rasterization"
        except ImportError:
            pass
    return torch_rasterize, "splatseg rasterize"


@torch.no_grad()
def _render_timing(
    timer: _Timer, render_fn: Callable, features: torch.Tensor, resolution: int, gen: torch.Generator, cap_s: float
) -> Tuple[float, str]:
    """(seconds, note) of one forward render of the [N, D] features as colours, of `_synthetic_scene`."""
    scene = _synthetic_scene(features.shape[0], resolution, gen, features.device)

    def render():
        return render_fn(scene["means"], scene["quats"], scene["scales"], scene["opacities"], features,
                         scene["viewmat"][None], scene["K"][None], resolution, resolution)

    cold = timer.once(render)
    if cold > cap_s:
        return cold, f"1 cold call, over the {cap_s:.0f} s cap"
    seconds = timer.median_s(render, warmup=0, min_repeats=3 if cold * 3 < cap_s else 1)
    return seconds, ""


def _export_timings(n: int, repeats: int, seed: int) -> Dict:
    """PLY export of n SH-degree-3 Gaussians against one `tofile` of the same bytes."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n, 3), dtype=np.float32)
    scales = rng.uniform(-5.0, -2.0, size=(n, 3)).astype(np.float32)
    quats = rng.standard_normal((n, 4), dtype=np.float32)
    opacities = rng.uniform(-3.0, 3.0, size=n).astype(np.float32)  # all above the 1/255 cut
    features_dc = rng.standard_normal((n, 3), dtype=np.float32)
    features_rest = 0.1 * rng.standard_normal((n, SH_REST_BASES, 3), dtype=np.float32)
    export, floor = [], []
    with tempfile.TemporaryDirectory(prefix="splatseg_bench_") as folder:
        ply_path, raw_path = Path(folder) / "export.ply", Path(folder) / "raw.bin"
        nbytes = 0
        for i in range(repeats + 1):  # the first of each is a warm-up
            start = time.perf_counter()
            write_gaussians_ply(ply_path, means, scales, quats, opacities, features_dc, features_rest)
            if i:
                export.append(time.perf_counter() - start)
            nbytes = ply_path.stat().st_size
            ply_path.unlink()
            if i == 0:
                raw = np.ones(nbytes, dtype=np.uint8)  # touched, so no page faults inside the timing
            start = time.perf_counter()
            raw.tofile(raw_path)
            if i:
                floor.append(time.perf_counter() - start)
            raw_path.unlink()
        del raw
    export_s, floor_s = statistics.median(export), statistics.median(floor)
    return {
        "export_s": export_s, "export_floor_s": floor_s, "export_ratio": export_s / floor_s, "export_mb": nbytes / 1e6,
    }  # fmt: skip


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def _load_average() -> Tuple[float, float, float]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):  # not on every platform
        return (math.nan, math.nan, math.nan)


def _fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def _fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"
