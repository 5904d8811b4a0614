"""`splatseg demo`: write the procedural scene, train splatseg on it, click an object, export it,
and show the result as a picture.

Small-scene settings for `ns-train splatseg` live here (`demo_train_args`) so that the demo,
the end-to-end test and the benchmarks train the same way. On CPU the whole run takes a few
minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional


def demo_train_args(
    data: Path,
    output_dir: Path,
    colour_steps: int = 600,
    feature_steps: int = 300,
    experiment_name: str = "demo",
    timestamp: Optional[str] = None,
) -> List[str]:
    """`ns-train splatseg` arguments for a ~40-view, ~100 px scene (shortened splatfacto schedule)."""
    refine_every = 50
    args = [
        "splatseg",
        "--data", str(data),
        "--output-dir", str(output_dir),
        "--experiment-name", experiment_name,
        "--vis", "tensorboard",
        "--max-num-iterations", str(colour_steps + feature_steps),
        "--steps-per-save", str(max(100, (colour_steps + feature_steps) // 3)),
        "--steps-per-eval-image", "100000",
        "--steps-per-eval-all-images", "100000",
        "--pipeline.model.feature-stage-start", str(colour_steps),
        "--pipeline.model.background-color", "white",
        "--pipeline.model.num-downscales", "0",
        "--pipeline.model.sh-degree", "1",
        "--pipeline.model.sh-degree-interval", str(max(1, colour_steps // 3)),
        "--pipeline.model.warmup-length", str(refine_every * 2),
        "--pipeline.model.refine-every", str(refine_every),
        "--pipeline.model.stop-split-at", str(int(colour_steps * 0.6)),
        "--pipeline.model.stop-screen-size-at", str(int(colour_steps * 0.6)),
        "--pipeline.model.reset-alpha-every", str(colour_steps),  # no opacity reset in a short run
        "--pipeline.model.num-sampled-pixels", "3000",
        # GFL over the last third of the feature stage (the paper: steps 2000-3000 of 3000)
        "--pipeline.model.gfl.start-step", str(feature_steps * 2 // 3),
        "--pipeline.model.gfl.refresh-every", str(max(1, feature_steps // 6)),
    ]
    if timestamp is not None:
        args += ["--timestamp", timestamp]
    return args


def ns_train_executable() -> str:
    """`ns-train` next to this interpreter (the venv's), else whatever is on PATH."""
    candidate = Path(sys.executable).parent / "ns-train"
    return str(candidate) if candidate.exists() else "ns-train"


def run_ns_train(args: List[str]) -> None:
    env = dict(os.environ)
    env.setdefault("TORCHDYNAMO_DISABLE", "1")  # torch.compile'd helpers cost seconds per graph on CPU
    result = subprocess.run([ns_train_executable(), *args], env=env)
    if result.returncode != 0:
        raise SystemExit(f"ns-train failed (exit {result.returncode}); see the output above.")


def latest_config(output_dir: Path, experiment_name: str) -> Path:
    """The newest run's config.yml under OUTPUT/EXPERIMENT/splatseg/."""
    configs = sorted((output_dir / experiment_name / "splatseg").glob("*/config.yml"))
    if not configs:
        raise FileNotFoundError(f"No splatseg run under {output_dir / experiment_name}.")
    return configs[-1]


def showcase_selection(config: Path, data: Path, output_dir: Path, view: str = "frame_00001.png") -> Dict[str, Path]:
    """After training: click the largest object of a view, save the selection, export it, and write a PNG
    (the image | the render | the selection highlighted | the object alone) so a person can see it worked."""
    import numpy as np
    from PIL import Image

    from splatseg_ns.core.io.selection_file import write_selection
    from splatseg_ns.tools.evaluate import render_selection_mask
    from splatseg_ns.tools.export import export_selection
    from splatseg_ns.tools.make_benchmark import deepest_pixel, object_masks
    from splatseg_ns.tools.select import select_by_view_clicks
    from splatseg_ns.trained_run import TrainedRun

    output_dir.mkdir(parents=True, exist_ok=True)
    run = TrainedRun(config)
    masks = object_masks(data, data / "images" / view, "coarse")
    largest = max(masks.values(), key=lambda m: m.sum())
    click = deepest_pixel(largest)
    selection = select_by_view_clicks(run, view, [tuple(click)], level="coarse")
    paths = {"selection": output_dir / "selection.json", "object": output_dir / "object.ply",
             "picture": output_dir / "selection.png"}
    write_selection(paths["selection"], selection)
    export_selection(run, selection, paths["selection"], paths["object"])

    target = run.view(view)
    rgb = run.render(target)["rgb"].clamp(0, 1).cpu().numpy()
    import torch

    selected = torch.zeros(run.model.num_points, dtype=torch.bool, device=run.device)
    selected[torch.tensor(selection.indices, dtype=torch.long, device=run.device)] = True
    mask = render_selection_mask(run, target, selected)[..., None]
    highlighted = np.where(mask, 0.5 * rgb + 0.5 * np.array([1.0, 0.1, 0.1]), 0.35 * rgb + 0.65)
    alone = np.where(mask, rgb, 1.0)
    image = np.asarray(Image.open(target.image_path).convert("RGB").resize(target.size), dtype=np.float32) / 255
    x, y = click
    column, row = target.render_pixel(x, y)
    for panel in (image, highlighted):  # mark the click
        panel[max(0, row - 1) : row + 2, max(0, column - 1) : column + 2] = (0.0, 0.0, 0.0)
    strip = np.concatenate([image, rgb, highlighted, alone], axis=1)
    scale = max(1, 256 // strip.shape[0])
    picture = Image.fromarray((strip * 255).astype(np.uint8)).resize(
        (strip.shape[1] * scale, strip.shape[0] * scale), Image.NEAREST
    )
    picture.save(paths["picture"])
    print(f"Clicked ({x}, {y}) on {view}: {len(selection.indices)} of {run.model.num_points} Gaussians selected.")
    return paths
