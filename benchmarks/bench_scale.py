"""Scale: memory per Gaussian and mask-cache bytes per image, measured; a plan for 3M Gaussians and 1,000 images.

Everything below "measured" is summed over the real objects (`numel * element_size`, views counted
once per storage), on whatever device this runs on (a CPU is enough):

1. Memory per Gaussian while training. Builds the real `SplatsegModel` (seed points in a cube, SH
   degree 3, 24 segmentation channels, a `--dino-dim` DINO feature) with nerfstudio's `Optimizers`
   from `method_config`'s optimizer configs, runs one real colour step (the model's rasteriser,
   gsplat's `DefaultStrategy` updating its running state) and one real feature step (contrastive,
   norm, spatial smoothness, GFL against synthetic candidates and DINO losses) at a small
   resolution, and then sums parameters, gradients, Adam state (exp_avg, exp_avg_sq), the
   strategy's state (grad2d, count, radii), what
   the model keeps between steps (`model.info`, the kNN table of the smoothness term) and the
   selection tools' `ClickIndex` per level. Two sizes, to check that bytes grow linearly with N.
2. Peak memory of one training step above the persistent state, at the full image size
   (`--step-resolution`, default 1920x1080), with the rasteriser replaced by a stand-in that
   returns gsplat-shaped renders (so no GPU is needed): gradients, the per-pixel activations of
   the losses (L1 + SSIM; contrastive on sampled pixels; DINO pooling) and the per-Gaussian ones
   of the model code (e.g. the SH coefficient concatenation), tracked op by op by a dispatch mode
   that adds each new tensor storage and subtracts it when it is freed; the timeline is projected
   to the plan's N by scaling its per-Gaussian storages.
   gsplat's own buffers (projection, tile intersections, per-pixel kernel state) cannot be measured
   without CUDA: they are an ESTIMATE read off gsplat 1.4.0's code, printed with its assumptions.
3. Mask-cache bytes per image. Writes entries through the real cache (`cache.extract_all`, so
   `FeatureCache.write`, `npz_bytes`, manifests): SAM-like two-level maps (warped-Voronoi
   "blobby" segments made at SAM's working size and resized nearest to the image, as
   `SamMasks.__call__` does; coarse segments with ~10% unmasked, fine segments nested in them),
   the real `dino_extractor` (ViT-S/8 architecture with random weights, scene PCA fit) and the real
   `clip_extractor` (a random-weight open_clip model with ViT-B-16's 512-d embeddings). Then the
   bytes per image the datamanager keeps in RAM for the cached batch, through the same loaders and
   conversions `SplatsegDataManager._attach_masks` uses, cross-checked on the real datamanager
   with the demo scene.
4. The plan: 3M Gaussians at 1080p against a 24 GB GPU, a 1,000-image cache on disk and in RAM.

The parts live in `benchmarks/scale/`, one job each: `bytes_count` (storages, peaks, RSS), `synthetic`
(SAM-like masks and images), `training` (1), `gsplat_buffers` (the estimate in 2), `cache` (3), `tables`
(the printed tables and the plan, 4).

Run it single-threaded beside other work: TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 (about 2 minutes, 4.2 GB
of RAM on a CPU; the sizes must stay above the 100k Gaussians the spatial and GFL terms sample per step).

    python benchmarks/bench_scale.py                               # 120k and 360k Gaussians, 3 image sizes
    python benchmarks/bench_scale.py --quick                       # 110k and 220k Gaussians, 2 image sizes
    python benchmarks/bench_scale.py --sizes 120000 360000 --cache-images 2 --tiles-per-gaussian 10
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from splatseg_ns._torchvision_cpu import install

install()
from scale.bytes_count import GB, max_rss_bytes  # noqa: E402
from scale.cache import cache_bytes, real_datamanager_check  # noqa: E402
from scale.tables import print_cache_tables, print_gaussian_tables, print_plan, print_step_tables  # noqa: E402
from scale.training import gaussian_memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[120_000, 360_000],
                        help="Gaussians measured; above spatial_samples/GFL's max_gaussians (100k), or the "
                        "projection counts their samples as per-Gaussian")
    parser.add_argument("--dino-dim", type=int, default=64, help="DINO channels per Gaussian (0: none)")
    parser.add_argument("--small-resolution", type=int, nargs=2, default=[160, 90], metavar=("W", "H"),
                        help="the real steps' render size (the CPU rasteriser)")
    parser.add_argument("--step-resolution", type=int, nargs=2, default=[1920, 1080], metavar=("W", "H"),
                        help="the stand-in steps' (and the plan's) image size")
    parser.add_argument("--cache-sizes", nargs="+", default=["480x270", "960x540", "1920x1080"])
    parser.add_argument("--cache-images", type=int, default=2, help="synthetic images per cache size")
    parser.add_argument("--segments", type=int, nargs=2, default=[50, 150], metavar=("COARSE", "FINE"))
    parser.add_argument("--no-models", action="store_true", help="cache: masks only (no DINO, CLIP)")
    parser.add_argument("--no-datamanager", action="store_true", help="skip the real-datamanager dtype check")
    parser.add_argument("--plan-gaussians", type=float, default=3e6)
    parser.add_argument("--plan-images", type=int, default=1000)
    parser.add_argument("--gpu-gb", type=float, default=24.0)
    parser.add_argument("--reserve-gb", type=float, default=1.5, help="CUDA context + allocator slack (assumed)")
    parser.add_argument("--tiles-per-gaussian", type=float, default=10.0, help="gsplat estimate's assumption")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="110k/220k Gaussians, 2 cache sizes, 1 image each")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.cache_sizes, args.cache_images = [110_000, 220_000], ["480x270", "1920x1080"], 1
    torch.set_num_threads(args.threads)
    full = tuple(args.step_resolution)
    small = tuple(args.small_resolution)

    print(f"torch {torch.__version__}, device cpu, threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    results = []
    for n in args.sizes:
        t0 = time.perf_counter()
        results.append(gaussian_memory(n, args.dino_dim, small, full, [args.plan_gaussians]))
        print(f"(measured {n:,} Gaussians in {time.perf_counter() - t0:.0f} s; max RSS so far "
              f"{max_rss_bytes() / GB:.2f} GB)")
    print()
    per_gaussian = print_gaussian_tables(results, args.dino_dim)
    fits = print_step_tables(results, full, args.dino_dim, args.plan_gaussians)

    sizes = [tuple(int(v) for v in s.split("x")) for s in args.cache_sizes]
    rows = cache_bytes(sizes, args.cache_images, *args.segments, with_models=not args.no_models)
    summary = print_cache_tables(rows, args.plan_images)
    if not args.no_datamanager:
        check = real_datamanager_check()
        print("Real `SplatsegDataManager` on the demo scene (folder masks), cached training batch: " +
              "; ".join(f"{k} {v}" for k, v in check.items()) + ".\n")
    print_plan(args, per_gaussian, fits, summary, full)
    print(f"max RSS of this run: {max_rss_bytes() / GB:.2f} GB")


if __name__ == "__main__":
    main()
