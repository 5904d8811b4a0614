"""The `splatseg` console command (tyro subcommands).

Each subcommand is a small dataclass whose fields are its options (tyro turns their
docstrings into `--help`) and whose `main()` does the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Union

import tyro
from typing_extensions import Annotated


@dataclass
class DemoData:
    """Write the built-in procedural demo scene (nerfstudio format, with exact two-level masks)."""

    output: tyro.conf.Positional[Path]
    """Folder to write the scene into (transforms.json, images/, coarse/, fine/, sparse_pc.ply)."""
    num_views: int = 40
    """Number of camera views on two rings around the scene."""
    resolution: int = 96
    """Width and height of each square image, in pixels."""
    seed: int = 0
    """Random seed: the same seed writes the same scene."""

    def main(self) -> None:
        from splatseg_ns.core.demo_scene import write_demo_scene

        write_demo_scene(self.output, num_views=self.num_views, resolution=self.resolution, seed=self.seed)
        print(f"Wrote the demo scene ({self.num_views} views, {self.resolution}px) to {self.output}")
        print(f"Train on it with: ns-train splatseg --data {self.output}")


@dataclass
class Demo:
    """Write the demo scene and train splatseg on it (CPU: a few minutes), then print where the run is."""

    output_dir: Path = Path("outputs")
    """Where ns-train writes the run (OUTPUT_DIR/demo/splatseg/<timestamp>/)."""
    data: Path = Path("demo_data/scene")
    """Where the demo scene is written (kept if it already exists)."""
    colour_steps: int = 600
    """Steps that train colour and geometry."""
    feature_steps: int = 300
    """Steps that then train the segmentation features."""

    def main(self) -> None:
        from splatseg_ns.demo import demo_train_args, latest_config, run_ns_train

        if not (self.data / "transforms.json").exists():
            DemoData(self.data).main()
        run_ns_train(demo_train_args(self.data, self.output_dir, self.colour_steps, self.feature_steps))
        config = latest_config(self.output_dir, "demo")
        print(f"\nDone. The trained run is {config.parent}")
        print(f"  view it:   ns-viewer --load-config {config}")
        print(f"  export it: ns-export gaussian-splat --load-config {config} --output-dir exports/")


Commands = Union[
    Annotated[Demo, tyro.conf.subcommand("demo")],
    Annotated[DemoData, tyro.conf.subcommand("demo-data")],
]


def entrypoint() -> None:
    from splatseg_ns._torchvision_cpu import install

    install()
    tyro.cli(Commands).main()


if __name__ == "__main__":
    entrypoint()
