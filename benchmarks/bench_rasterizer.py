"""Forward+backward timing of splatseg's pure-torch rasteriser (the CPU path).

Renders a random scene (Gaussians filling a box in front of the camera, 3D sizes
fixed so that the projected footprint grows with the resolution, as when one scene is
rendered at several sizes) and times ``rasterize`` + ``loss.backward()``.  Prints a
markdown table of median times and the 24-channel / RGB ratio.

    python benchmarks/bench_rasterizer.py            # 3 repeats, all sizes
    python benchmarks/bench_rasterizer.py --quick    # 1 repeat after warm-up
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from splatseg_ns.core.render.rasterize import rasterize


def make_scene(n: int, size: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * torch.tensor([2.0, 2.0, 2.0]) + torch.tensor([-1.0, -1.0, 2.0])
    quats = torch.randn(n, 4, generator=g)
    log_scales = torch.empty(n, 3).uniform_(-4.6, -3.0, generator=g)  # 1 cm .. 5 cm
    opacity_logits = torch.randn(n, generator=g)
    f = 1.0 * size
    Ks = torch.tensor([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])[None]
    viewmats = torch.eye(4)[None]
    return means, quats, log_scales, opacity_logits, viewmats, Ks


def time_one(n: int, size: int, kind: str, repeats: int) -> float:
    means, quats, log_scales, opacity_logits, viewmats, Ks = make_scene(n, size)
    g = torch.Generator().manual_seed(1)
    if kind == "rgb-sh3":
        colors, sh_degree = 0.3 * torch.randn(n, 16, 3, generator=g), 3
    else:
        colors, sh_degree = torch.rand(n, 24, generator=g), None
    params = [t.requires_grad_(True) for t in (means, quats, log_scales, opacity_logits, colors)]
    times = []
    for i in range(repeats + 1):  # first run is warm-up
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        img, alpha, info = rasterize(
            means, quats, torch.exp(log_scales), torch.sigmoid(opacity_logits), colors,
            viewmats, Ks, size, size, sh_degree=sh_degree, absgrad=True,
        )
        info["means2d"].retain_grad()
        (img.square().mean() + alpha.mean()).backward()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one timed repeat per cell")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {repeats} forward+backward runs (seconds), absgrad on")
    # OpenMP threads slow down ~10x when another process busies a core: check the load.
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs\n")
    print("| Gaussians | image | RGB (SH deg 3) | 24-ch features | 24ch / RGB |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.counts:
        for size in args.sizes:
            t_rgb = time_one(n, size, "rgb-sh3", repeats)
            t_feat = time_one(n, size, "feat24", repeats)
            print(f"| {n} | {size}x{size} | {t_rgb:.3f} | {t_feat:.3f} | {t_feat / t_rgb:.2f} |", flush=True)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
