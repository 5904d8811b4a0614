"""The built-in demo: write the procedural scene, train splatseg on it, say where the run is.

Small-scene settings for `ns-train splatseg` live here (`demo_train_args`) so that the demo,
the end-to-end test and the benchmarks train the same way. On CPU the whole run takes a few
minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional


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
