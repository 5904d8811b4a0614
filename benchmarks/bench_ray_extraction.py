r"""Images per second of `splatseg masks` serial against `--ray` with 1 and 2 workers, in one run, on this machine.

Two model sets, random weights (no checkpoint can be downloaded here): the tiny SAM + CLIP of the tests, and
SAM's real ViT-B architecture (points_per_side 8, so that a CPU run takes minutes, not hours). Each runner
fills a fresh copy of the same cache: serially with torch's threads, serially on 1 thread (what one 1-CPU
Ray worker has), and on Ray with 1 and 2 workers. The Ray instance is started once before the timed runs
and its start-up time (init + one worker ready) is reported apart; each Ray run's time includes starting
its workers and sending them the extractors (ViT-B: 360 MB of weights each); the steady rate, the second N
images of a run of 2N, is what a large scene sees.

    python benchmarks/bench_ray_extraction.py [--images 40] [--real-images 2]   # ~15 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def model_sets(real: bool):
    from segment_anything import sam_model_registry

    from splatseg_ns.core.extract.clip_embeddings import ClipConfig
    from splatseg_ns.core.extract.extractors import clip_extractor, sam_extractor
    from splatseg_ns.core.extract.sam_masks import SamMaskConfig
    from splatseg_ns.testing.tiny_models import build_tiny_clip, build_tiny_sam

    loose = dict(pred_iou_thresh=0.0, stability_score_thresh=0.0)
    if real:
        return [sam_extractor(SamMaskConfig(model_type="vit_b", points_per_side=8, **loose), "cpu",
                              model=sam_model_registry["vit_b"]())]
    model, tokenizer = build_tiny_clip()
    return [sam_extractor(SamMaskConfig(points_per_side=8, **loose), "cpu", model=build_tiny_sam()),
            clip_extractor(ClipConfig(), "cpu", model, tokenizer)]


def timed(images, root: Path, extractors, runner) -> float:
    from splatseg_ns.core.extract.extraction import extract_all

    start = time.perf_counter()
    summary = extract_all(images, extractors, data_dir=root, progress=False, runner=runner)
    seconds = time.perf_counter() - start
    assert summary.images_computed == len(images), summary
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40, help="N for the tiny models (runs of N and 2N images)")
    parser.add_argument("--real-images", type=int, default=2, help="N for the ViT-B SAM")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    args = parser.parse_args()

    import ray
    import torch

    from splatseg_ns._torchvision_cpu import install
    from splatseg_ns.core.extract.ray_extraction import RayOptions, ray_runner
    from tests.helpers import write_images

    install()
    start = time.perf_counter()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    probe = ray.remote(num_cpus=1)(lambda: True)
    ray.get(probe.remote())
    startup = time.perf_counter() - start
    print(f"Ray start-up (local instance, init + first worker ready): {startup:.1f} s; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print("\nimg/s over the whole run (workers' start included) / steady img/s (the second N images: the difference "
          "between runs of N and 2N images)\n")
    print("| models | N | serial | serial, 1 thread | ray, 1 worker | ray, 2 workers | steady: 2 workers / serial | "
          "steady: 2 workers / 1 worker |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        for real, n in ((False, args.images), (True, args.real_images)):
            source = work / f"source_{real}"
            images = write_images(source, n=2 * n, size=(args.size, args.size))
            whole, steady = [], []
            for name, runner, threads in (("serial", None, torch.get_num_threads()), ("serial1", None, 1),
                                          ("ray1", ray_runner(RayOptions(workers=1)), None),
                                          ("ray2", ray_runner(RayOptions(workers=2)), None)):
                default_threads = torch.get_num_threads()
                torch.set_num_threads(threads or default_threads)  # each Ray worker runs 1 thread (1 CPU)
                try:
                    seconds = {}
                    for count in (n, 2 * n):
                        root = work / f"{name}_{real}_{count}"
                        shutil.copytree(source, root)
                        mine = [root / p.relative_to(source) for p in images[:count]]
                        seconds[count] = timed(mine, root, model_sets(real), runner)
                finally:
                    torch.set_num_threads(default_threads)
                whole.append(2 * n / seconds[2 * n])
                steady.append(n / max(seconds[2 * n] - seconds[n], 1e-9))
            label = "SAM ViT-B (random weights), 8x8 points" if real else "tiny SAM + tiny CLIP"
            print(f"| {label} | {n} x {args.size} px | " + " | ".join(f"{w:.3f} / {s:.3f}" for w, s in zip(whole, steady))
                  + f" | {steady[3] / steady[0]:.2f}x | {steady[3] / steady[2]:.2f}x |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
