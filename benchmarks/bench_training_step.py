"""Time of one splatseg training step in the feature stage against one colour step, side by side.

Builds the real nerfstudio pipeline (`splatseg` method config, splatseg datamanager with the
demo scene's masks) on this machine's device and times full training iterations: forward,
loss, backward, optimiser step. Colour steps run before `feature_stage_start`, feature steps
after it (geometry and colour frozen, features only, contrastive loss on sampled pixels).

    python benchmarks/bench_training_step.py                 # demo scene at 96 and 192 px
    python benchmarks/bench_training_step.py --resolutions 96 --steps 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from splatseg_ns._torchvision_cpu import install

install()


def build_pipeline(data: Path, device: str, num_sampled_pixels: int):
    from nerfstudio.engine.optimizers import Optimizers

    from splatseg_ns.method_config import splatseg_trainer_config

    config = splatseg_trainer_config()
    config.pipeline.datamanager.data = data
    config.pipeline.model.feature_stage_start = 10_000
    config.pipeline.model.num_downscales = 0
    config.pipeline.model.sh_degree_interval = 1  # full SH degree at once: the colour step at its real cost
    config.pipeline.model.num_sampled_pixels = num_sampled_pixels
    pipeline = config.pipeline.setup(device=device, test_mode="val")
    pipeline.train()
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
    pipeline.model.optimizers = optimizers.optimizers
    return pipeline, optimizers


def time_steps(pipeline, optimizers, first_step: int, steps: int) -> float:
    times = []
    for step in range(first_step, first_step + steps + 2):
        pipeline.model.step = step
        if pipeline.model.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        sum(loss_dict.values()).backward()
        optimizers.optimizer_step_all()
        optimizers.zero_grad_all()
        if pipeline.model.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])  # first two: warm-up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[96, 192])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num-sampled-pixels", type=int, default=3000)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    from splatseg_ns.scenes.demo_scene import write_demo_scene

    print(f"device {args.device}, torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f}")
    print("| scene | Gaussians | colour step (s) | feature step (s) | feature / colour |")
    print("|---|---:|---:|---:|---:|")
    for resolution in args.resolutions:
        with tempfile.TemporaryDirectory() as tmp:
            data = write_demo_scene(Path(tmp) / "scene", num_views=12, resolution=resolution)
            pipeline, optimizers = build_pipeline(data, args.device, args.num_sampled_pixels)
            colour = time_steps(pipeline, optimizers, 0, args.steps)
            feature = time_steps(pipeline, optimizers, 10_000, args.steps)
            n = pipeline.model.num_points
            print(f"| demo {resolution}px | {n} | {colour:.3f} | {feature:.3f} | {feature / colour:.2f} |")


if __name__ == "__main__":
    main()
