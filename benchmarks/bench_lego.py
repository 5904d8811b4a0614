"""splatseg on a real scene: the NeRF-synthetic lego (../shared/data/lego_small), CPU, low resolution.

Masks: the scene has no instance masks and SAM's weights cannot be downloaded here, so the
training masks come from the images' alpha channel: at both levels the lego is one instance and
the background another (so background floaters learn to differ from the object). Then one
click on the lego in training view train/r_0 selects it, and the selection, rendered into five
held-out test views (r_100 ... r_180, never trained on), is scored against their alpha masks.

    python benchmarks/bench_lego.py [--colour-steps 1500] [--feature-steps 500] [--scale 0.5] [--output-dir /tmp/lego]

Prints a markdown table (mIoU / mAcc / mBIoU, Gaussians, wall time); the run stays in
--output-dir. Needs ../shared/data (exits with a message when absent).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lego_small"
SCORE_VIEWS = ["test/r_100", "test/r_120", "test/r_140", "test/r_160", "test/r_180"]


def write_alpha_masks(data: Path, mask_dir: Path) -> int:
    """coarse/ and fine/ maps for every training image: 1 = the object (alpha > 127), 2 = background."""
    count = 0
    for image in sorted((data / "train").glob("*.png")):
        with Image.open(image) as im:
            ids = np.where(np.array(im.getchannel("A")) > 127, 1, 2).astype(np.uint8)
        for level in ("coarse", "fine"):
            (mask_dir / level).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids).save(mask_dir / level / image.name)
        count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--colour-steps", type=int, default=1500)
    parser.add_argument("--feature-steps", type=int, default=500)
    parser.add_argument("--num-random", type=int, default=5000, help="random initial Gaussians (blender has no seed points)")
    parser.add_argument("--scale", type=float, default=0.5, help="image scale (0.5: 100x100 px)")
    parser.add_argument("--output-dir", type=Path, default=Path("/tmp/splatseg_lego"))
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is absent: this benchmark needs the shared data folder beside the project.")

    from splatseg_ns.demo import demo_train_args, run_ns_train
    from splatseg_ns.tools.benchmark_data import write_benchmark
    from splatseg_ns.tools.evaluate import evaluate
    from splatseg_ns.trained_run import TrainedRun

    out = args.output_dir
    write_alpha_masks(DATA, out / "masks")
    train_args = demo_train_args(DATA, out / "runs", args.colour_steps, args.feature_steps, "lego", "bench")
    train_args += ["--pipeline.datamanager.mask-dir", str(out / "masks"),
                   "--pipeline.model.num-random", str(args.num_random), "--pipeline.model.random-scale", "3.0",
                   "--pipeline.datamanager.camera-res-scale-factor", str(args.scale),
                   "blender-data"]
    start = time.perf_counter()
    run_ns_train(train_args)
    train_s = time.perf_counter() - start

    write_benchmark(DATA, out / "benchmark", "alpha", "train/r_0.png", SCORE_VIEWS)
    run = TrainedRun(out / "runs" / "lego" / "splatseg" / "bench" / "config.yml")
    metrics = evaluate(run, out / "benchmark")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    o = metrics["overall"]
    print("\n| scene | steps (colour + feature) | Gaussians | selected | mIoU | mAcc | mBIoU | train wall (s) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    p = metrics["prompts"][0]
    print(f"| lego_small {int(200 * args.scale)}px, click on train/r_0, scored on 5 test views | {args.colour_steps} + {args.feature_steps} | "
          f"{run.model.num_points} | {p['num_gaussians']} | {o['mIoU']:.3f} | {o['mAcc']:.3f} | {o['mBIoU']:.3f} | {train_s:.0f} |")


if __name__ == "__main__":
    main()
