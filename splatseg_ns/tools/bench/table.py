"""The speed table as markdown: a header line, the selection table, the render/export table, notes."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence


def format_table(rows: List[Dict]) -> str:
    """Markdown: a header line (device, torch, threads, load, date), the selection table, the
    render/export table and notes on what each column includes."""
    if not rows:
        return "(no rows)"
    first = rows[0]
    lines = [
        f"splatseg speed table - {first['device']} ({first['device_name']}), torch "
        f"{first['torch_version']}, {first['threads']} threads, load average (1/5/15 min) "
        f"{fmt_load(first['load_avg_start'])} at start, {fmt_load(first['load_avg_end'])} at end, "
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
        render = fmt(r["render_ms"], ".1f") + (f" ({r['render_note']})" if r["render_note"] else "")
        lines.append(
            f"| {r['size']} | {render} | {fmt(r['export_s'], '.3g')} | {fmt(r['export_floor_s'], '.3g')} "
            f"| {fmt(r['export_ratio'], '.2f', 'x')} | {fmt(r['export_mb'], '.1f')} |"
        )
    contended = [
        f"{r['size']} ({r['floor_compare_ms']:.2f} ms with {r['threads']} threads, "
        f"{r['floor_compare_1thread_ms']:.2f} ms with 1)"
        for r in rows
        if is_contended(r)
    ]
    judged = [r for r in rows if not is_contended(r)]
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
    if any(is_contended(r) for r in rows):
        lines.append(
            "Thread contention: with other load on this machine, torch's OpenMP threads wait for scheduler "
            "ticks, so multi-threaded ops (the floors, the render) are inflated; rerun with --threads 1."
        )
    return "\n".join(lines)


def is_contended(row: Dict) -> bool:
    """Whether this row's multi-threaded compare took over 2x its one-thread time: other load
    is descheduling torch's OpenMP threads, so the floors (and the render) are inflated."""
    single = row.get("floor_compare_1thread_ms")
    return single is not None and row["threads"] > 1 and row["floor_compare_ms"] > 2 * single


def fmt_load(load: Sequence[float]) -> str:
    return "/".join(f"{x:.2f}" for x in load)


def fmt(value: Optional[float], spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"
