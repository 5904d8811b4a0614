"""Speed table of the interactive path: click -> Gaussians, text -> candidates, render, PLY export.

Runs `splatseg_ns.tools.bench.speed_table` on this machine's device (CUDA if available, else CPU) and
prints its markdown table: click latency against its floors (one compare over the precomputed
assignment, one pass over the feature matrix), the one-off precompute per level, the feature
render at the click, the text query and the PLY export against a raw write of the same bytes.

    python benchmarks/bench_selection.py                 # 100k, 1M, 3M Gaussians
    python benchmarks/bench_selection.py --quick         # 100k, 1M, shorter budgets
    python benchmarks/bench_selection.py --sizes 1000000 --device cpu --threads 1
"""

from __future__ import annotations

import argparse

from splatseg_ns.tools.bench import DEFAULT_SIZES, format_table, speed_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="sizes 100k and 1M, shorter time budgets")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=None, help=f"numbers of Gaussians (default {DEFAULT_SIZES})"
    )
    parser.add_argument("--device", default=None, help="cuda, cpu, ... (default: cuda if available, else cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--render-resolution", type=int, default=None, help="default 128 on CPU, 512 on CUDA")
    parser.add_argument("--render-cap", type=float, default=15.0, help="skip renders predicted to take longer (s)")
    parser.add_argument("--no-render", action="store_true", help="leave out the feature render")
    parser.add_argument("--no-export", action="store_true", help="leave out the PLY export")
    args = parser.parse_args()
    rows = speed_table(
        sizes=args.sizes,
        device=args.device,
        render_resolution=args.render_resolution,
        include_render=not args.no_render,
        include_export=not args.no_export,
        quick=args.quick,
        render_cap_s=args.render_cap,
        threads=args.threads,
    )
    print(format_table(rows))


if __name__ == "__main__":
    main()
