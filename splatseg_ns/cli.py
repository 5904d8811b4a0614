"""The `splatseg` console command (tyro subcommands).

Each subcommand is a small dataclass whose fields are its options (tyro turns their
docstrings into `--help`) and whose `main()` first checks what it was given (`tools.checks`:
paths of the right kind and writable, options in range, no conflicting prompts), then hands it
to its module in `tools` (one module per subcommand). Bad input of any kind ends in one line,
"error: <what, naming the file or option, and the fix>", and exit status 1, never a traceback
(`entrypoint`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Optional, Tuple, Union

import tyro
from typing_extensions import Annotated

from splatseg_ns.core.extract.clip_embeddings import ClipConfig  # these four are import-light: no torch
from splatseg_ns.core.extract.dino_features import DinoConfig
from splatseg_ns.core.extract.sam_masks import SamMaskConfig
from splatseg_ns.core.features import Level

Clicks = Annotated[List[Tuple[float, float]], tyro.conf.UseAppendAction]


def _fail(err: Exception) -> None:
    """Bad input ends with its message, not a traceback."""
    raise SystemExit(f"error: {err}")


def _input_errors() -> Tuple[type, ...]:
    """The errors that mean bad input (each names the file or option and the fix), not a bug."""
    from splatseg_ns.core.extract.cache import CacheError
    from splatseg_ns.core.extract.masks import MaskError
    from splatseg_ns.core.extract.ray_extraction import RaySetupError
    from splatseg_ns.core.io.images import ImageReadError, InputFilesError
    from splatseg_ns.core.io.selection_file import SelectionError
    from splatseg_ns.core.io.weights import WeightsError
    from splatseg_ns.tools.checks import InputError
    from splatseg_ns.trained_run import RunError

    return (InputError, RunError, SelectionError, CacheError, WeightsError, ImageReadError, InputFilesError, MaskError,
            RaySetupError, OSError)


def _written_by_demo_data(folder: Path) -> bool:
    """Whether `folder` holds a scene `splatseg demo-data` wrote (its scene.json's own fields)."""
    from splatseg_ns.core.files import read_json

    scene = read_json(Path(folder) / "scene.json")
    return isinstance(scene, dict) and {"description", "camera_convention", "num_views", "objects"} <= set(scene)


@dataclass
class DemoData:
    """Write a procedural scene with exact two-level masks (nerfstudio format): the easy demo, or the hard tabletop."""

    output: tyro.conf.Positional[Path]
    """Folder to write the scene into (transforms.json, images/, coarse/, fine/, sparse_pc.ply, scene.json)."""
    scene: Literal["demo", "tabletop"] = "demo"
    """demo: four small objects on white. tabletop: touching objects on a textured floor, thin and small parts,
    similar colours, an unmasked backdrop, plus amodal/ masks and the held-out views in scene.json."""
    num_views: Optional[int] = None
    """Number of camera views on two rings around the scene (default: 40 demo, 48 tabletop)."""
    resolution: Optional[int] = None
    """Width and height of each square image, in pixels (default: 96 demo, 128 tabletop)."""
    seed: int = 0
    """Random seed (0 or more): the same seed writes the same scene (and the same mask noise)."""
    mask_noise: Literal["none", "mild", "strong"] = "none"
    """Masks that fail as automatic (SAM-like) ones do, instead of exact ones: mild (random merges and splits, 1 px
    eroded) or strong (granularity flips, merged siblings and neighbours, missing thin parts, borders off by up to
    3 px, spurious masks; rates and sources in splatseg_ns/scenes/mask_noise.py). The amodal/ masks stay exact."""
    overwrite: bool = False
    """Write into a non-empty folder that holds something else than a scene this command wrote."""

    def main(self) -> None:
        from splatseg_ns.tools.checks import at_least, fits_in_memory, not_someone_elses_folder, writable_folder

        at_least(self.num_views, "--num-views", 1)
        at_least(self.resolution, "--resolution", 8)
        at_least(self.seed, "--seed", 0)
        if self.resolution is not None:  # rays, hits and depth per pixel, in float64, for a whole view at once
            fits_in_memory(600 * self.resolution**2, f"--resolution {self.resolution}", "one view")
        writable_folder(self.output, "OUTPUT")
        not_someone_elses_folder(self.output, "OUTPUT", _written_by_demo_data(self.output) or self.overwrite,
                                 "--overwrite")
        if self.scene == "tabletop":
            from splatseg_ns.scenes.tabletop import write_tabletop_scene as write
        else:
            from splatseg_ns.scenes.demo_scene import write_demo_scene as write
        defaults = {"demo": (40, 96), "tabletop": (48, 128)}[self.scene]
        views, resolution = self.num_views or defaults[0], self.resolution or defaults[1]
        write(self.output, num_views=views, resolution=resolution, seed=self.seed)
        noise = ""
        if self.mask_noise != "none":
            from splatseg_ns.core.files import atomic_write_json, read_json
            from splatseg_ns.scenes.mask_noise import corrupt_scene_masks, noise_config

            corrupt_scene_masks(self.output, noise_config(self.mask_noise), self.seed)
            scene_json = self.output / "scene.json"
            atomic_write_json(scene_json, {**read_json(scene_json), "mask_noise": self.mask_noise})
            noise = f", {self.mask_noise} mask noise"
        print(f"Wrote the {self.scene} scene ({views} views, {resolution}px{noise}) to {self.output}")
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
        from splatseg_ns.tools.checks import at_least, writable_folder
        from splatseg_ns.tools.demo import demo_train_args, latest_config, run_ns_train, showcase_selection

        at_least(self.colour_steps, "--colour-steps", 1)
        at_least(self.feature_steps, "--feature-steps", 1)
        writable_folder(self.output_dir, "--output-dir")
        writable_folder(self.data, "--data")
        if not (self.data / "transforms.json").exists():
            DemoData(self.data).main()
        run_ns_train(demo_train_args(self.data, self.output_dir, self.colour_steps, self.feature_steps))
        config = latest_config(self.output_dir, "demo")
        shown = showcase_selection(config, self.data, config.parent / "demo_selection")
        print(f"\nDone. The trained run is {config.parent}")
        print(f"  the clicked object:  {shown['object']}  (selection {shown['selection']})")
        print(f"  picture:             {shown['picture']}  (image | render | selection | object alone)")
        print(f"  view it:             ns-viewer --load-config {config}")
        print(f"  select another:      splatseg select --load-config {config} --view frame_00003.png --click X Y "
              "--output sel.json")


@dataclass
class Select:
    """Select the Gaussians of an object by clicking pixels of one of the run's images; writes a selection file."""

    load_config: Path
    """config.yml of a trained splatseg run."""
    output: Path
    """Selection file (JSON) to write."""
    view: Optional[str] = None
    """The image the clicks are on, by file name (e.g. frame_00001.png), from the training or eval split."""
    click: Clicks = field(default_factory=list)
    """A pixel X Y on the object (repeat --click for more)."""
    negative: Clicks = field(default_factory=list)
    """A pixel X Y that is NOT the object (repeat for more)."""
    level: Level = "coarse"
    """coarse: the whole object; fine: the part."""
    threshold: Optional[float] = None
    """Also require each Gaussian to be at least this sure of the clicked segment: the share of its rendered
    weight on the segment's masks (its vote), or for a run without votes its cosine to the segment's centre."""
    text: Optional[str] = None
    """Select by name instead of clicks (e.g. "mushroom"); needs a run trained with text queries (CLIP)."""
    masks: Optional[Path] = None
    """Select by masks instead: a folder of binary masks of one object (white on black), each named like the
    view's image file (frame_00001.png), in as few views as you have (a text-prompted detector's, say). Every
    Gaussian with more of its rendered weight inside them than outside is selected; works on splatfacto runs too."""

    def main(self) -> None:
        from splatseg_ns.core.io.selection_file import write_selection
        from splatseg_ns.tools.checks import InputError, existing_file, existing_folder, in_range, writable_file
        from splatseg_ns.tools.select import select_by_masks, select_by_text_query, select_by_view_clicks
        from splatseg_ns.trained_run import TrainedRun

        prompts = [self.masks is not None, self.text is not None, bool(self.click or self.negative)]
        if sum(prompts) > 1:
            raise InputError("give one kind of prompt: --view NAME with --click X Y, or --text NAME, or --masks DIR "
                             "(--text and --masks take no --click or --negative)")
        if not any(prompts) or (prompts[2] and (self.view is None or not self.click)):
            raise InputError("give --view NAME with --click X Y (repeatable), or --text NAME, or --masks DIR")
        if self.text is not None and not self.text.strip():
            raise InputError("--text is empty: give a name, e.g. --text mushroom")
        in_range(self.threshold, "--threshold", -1.0, 1.0, "a cosine or a share of rendered weight")
        existing_file(self.load_config, "--load-config", "the config.yml of a trained run")
        writable_file(self.output, "--output")
        if self.masks is not None:
            existing_folder(self.masks, "--masks", "binary masks named like the views' images")
            unused = [flag for flag, given in (("--view", self.view is not None), ("--threshold", self.threshold is not None),
                                               ("--level", self.level != "coarse")) if given]
            if unused:
                raise InputError(f"--masks takes no {', '.join(unused)}: the masks pick the Gaussians themselves")
        run = TrainedRun(self.load_config)
        if self.masks is not None:
            selection = select_by_masks(run, self.masks)
        elif self.text is not None:
            selection = select_by_text_query(run, self.text, self.level, self.threshold)
        else:
            selection = select_by_view_clicks(run, self.view, self.click, self.negative, self.level, self.threshold)
        if not selection.indices:
            hint = " (lower --threshold)" if self.threshold is not None else ""
            raise InputError(f"these prompts select no Gaussian{hint}; nothing was written to {self.output}")
        write_selection(self.output, selection)
        print(f"Selected {len(selection.indices)} of {run.model.num_points} Gaussians ({selection.level}); wrote "
              f"{self.output}")
        print(f"Export it with: splatseg export --load-config {self.load_config} --selection {self.output} --output object.ply")


@dataclass
class Export:
    """Export a selection as a 3DGS PLY (or the scene without it), or every segment (--segments)."""

    load_config: Path
    """config.yml of a trained splatseg run."""
    selection: Optional[Path] = None
    """Selection file from `splatseg select`."""
    output: Optional[Path] = None
    """PLY file to write (with --selection)."""
    invert: bool = False
    """Write the scene without the selection instead of the selection."""
    keep_weak: bool = False
    """Keep the Gaussians that belong to the object only weakly (unsure of their label, floaters); dropped by default.
    Either way the export says how many it kept and why it dropped the others, and writes that beside the PLY
    (<output>.export.json)."""
    segments: bool = False
    """Write every segment: one PLY each plus segments_coloured.ply, into --output-dir."""
    output_dir: Optional[Path] = None
    """Folder for --segments."""
    level: Level = "coarse"
    """Level of the segments (--segments)."""
    method: Literal["candidates", "clustering"] = "candidates"
    """Segments from the global candidates, or from clustering position + feature (physical distance weighted high)."""

    def main(self) -> None:
        from splatseg_ns.core.export.writer import report_path
        from splatseg_ns.core.io.selection_file import read_selection
        from splatseg_ns.tools.checks import InputError, existing_file, writable_file, writable_folder
        from splatseg_ns.tools.export import export_segments, export_selection
        from splatseg_ns.trained_run import TrainedRun

        if self.segments == (self.selection is not None):
            raise InputError("give either --selection FILE --output OBJ.ply, or --segments --output-dir DIR")
        if self.segments and self.output_dir is None:
            raise InputError("--segments needs --output-dir DIR")
        if self.selection is not None and self.output is None:
            raise InputError("--selection needs --output OBJ.ply")
        existing_file(self.load_config, "--load-config", "the config.yml of a trained run")
        if self.segments:
            writable_folder(self.output_dir, "--output-dir")
            run = TrainedRun(self.load_config)
            paths, replaced = export_segments(run, self.output_dir, self.level, self.method)
            earlier = f" (replacing the {replaced} files of an earlier segments export)" if replaced else ""
            print(f"Wrote {len(paths) - 1} segments and {paths[-1].name} to {self.output_dir}{earlier}")
            return
        selection = read_selection(self.selection)
        writable_file(self.output, "--output")
        run = TrainedRun(self.load_config)
        report = export_selection(run, selection, self.selection, self.output, self.invert, self.keep_weak)
        print(report.summary())
        if report.warning():
            print(report.warning())
        print(f"(this report: {report_path(self.output)})")


@dataclass
class Eval:
    """Score click selections against ground-truth masks: IoU, accuracy, boundary IoU; mIoU/mAcc."""

    load_config: Path
    """config.yml of a trained splatseg run."""
    benchmark: Path
    """Folder with prompts.json and gt/<name>/<image stem>.png (see `splatseg make-benchmark`)."""
    output: Path = Path("metrics.json")
    """Where to write the metrics (JSON)."""

    def main(self) -> None:
        from splatseg_ns.core.files import atomic_write_json
        from splatseg_ns.tools.checks import existing_file, existing_folder, writable_file
        from splatseg_ns.tools.evaluate import evaluate, load_prompts
        from splatseg_ns.trained_run import TrainedRun

        existing_file(self.load_config, "--load-config", "the config.yml of a trained run")
        existing_folder(self.benchmark, "--benchmark", "a benchmark folder from `splatseg make-benchmark`")
        load_prompts(self.benchmark)  # a damaged prompts.json fails now, not after loading the run
        writable_file(self.output, "--output")
        metrics = evaluate(TrainedRun(self.load_config), self.benchmark)
        atomic_write_json(self.output, metrics, what="metrics file")
        for p in metrics["prompts"]:
            line = f"{p['name']:>24}  IoU {p['iou']:.3f}  acc {p['accuracy']:.3f}  boundary IoU {p['boundary_iou']:.3f}"
            if "export" in p:
                e = p["export"]
                line += f"  export: precision {e['precision']:.3f} recall {e['recall']:.3f} IoU {e['iou']:.3f}"
            if "failure" in p:
                line += "  (selected nothing: the click hit only Gaussians of no segment)"
            print(line)
        o = metrics["overall"]
        print(f"{'overall':>24}  mIoU {o['mIoU']:.3f}  mAcc {o['mAcc']:.3f}  mBIoU {o['mBIoU']:.3f}  -> {self.output}")
        for key, label in (("train_views", "on training views"), ("heldout_views", "on held-out views"),
                           ("prompts_in_train_views", "clicked in training views"),
                           ("prompts_in_heldout_views", "clicked in held-out views")):
            if o[key]["num_prompts"]:
                print(f"{label:>24}  mIoU {o[key]['mIoU']:.3f}  mAcc {o[key]['mAcc']:.3f}  mBIoU {o[key]['mBIoU']:.3f}")
        if "export" in o:
            e = o["export"]
            print(f"{'exports, rendered alone':>24}  precision {e['mPrecision']:.3f}  recall {e['mRecall']:.3f}  "
                  f"IoU {e['mIoU']:.3f}")


@dataclass
class MakeBenchmark:
    """Write a benchmark folder (prompts.json + gt masks) from a dataset's object masks."""

    data: Path
    """Dataset folder."""
    output: Path
    """Benchmark folder to write."""
    prompt_view: List[str]
    """Images whose masks give the prompts (one click per object in each, deep inside it); several
    prompt views (training and held-out ones) give each object a prompt in each, named object@view."""
    score_views: List[str]
    """Images to score the selections on."""
    source: Literal["coarse", "fine", "alpha"] = "coarse"
    """Object masks from DATA/coarse or DATA/fine instance maps, or from the images' alpha channel."""

    def main(self) -> None:
        from splatseg_ns.tools.checks import InputError, existing_folder, writable_folder
        from splatseg_ns.tools.make_benchmark import write_benchmark

        existing_folder(self.data, "--data", "a dataset")
        writable_folder(self.output, "--output")
        try:
            prompts = write_benchmark(self.data, self.output, self.source, self.prompt_view, self.score_views)
        except (ValueError, FileNotFoundError) as err:
            raise InputError(str(err)) from err
        print(f"Wrote {len(prompts)} prompts, scored on {len(self.score_views)} views, to {self.output}")


@dataclass
class Masks:
    """Precompute the per-image cache (SAM masks; optionally CLIP embeddings and DINO features) outside training."""

    data: Path
    """Dataset folder; every image under images/ (or the folder itself) is processed."""
    cache_dir: Optional[Path] = None
    """Cache folder (default: DATA/splatseg_cache), the one ns-train reads."""
    shard: str = "0/1"
    """i/n: process every n-th image starting at i, so n GPUs or machines share a big scene (for Slurm-style job
    arrays; with a Ray cluster prefer --ray, which schedules, retries and checks the whole scene in one command)."""
    ray: Optional[str] = None
    """Compute on Ray workers, one per GPU (or per --ray-cpus-per-worker CPUs without GPUs), this process writing
    every entry: 'auto' (the cluster this machine joined with `ray start`, else a local instance), 'local', or
    the cluster's address. Needs the extra: pip install 'splatseg[ray]'."""
    ray_cpus_per_worker: float = 1.0
    """CPUs per Ray worker when the cluster has no GPU."""
    ray_workers: Optional[int] = None
    """At most this many Ray workers (default: as many as the cluster holds)."""
    on_interrupt = "every cache entry written so far is valid and kept; rerun the same command to compute the rest"
    clip: bool = False
    """Also embed every mask with CLIP (for text queries)."""
    dino: bool = False
    """Also extract DINO feature maps (for distillation)."""
    sam: SamMaskConfig = field(default_factory=SamMaskConfig)
    """SAM model and mask generator settings."""
    clip_config: ClipConfig = field(default_factory=ClipConfig)
    """CLIP model (with --clip)."""
    dino_config: DinoConfig = field(default_factory=DinoConfig)
    """DINO model, resolution and PCA size (with --dino)."""

    def main(self) -> None:
        from splatseg_ns.tools.checks import InputError, at_least, existing_folder, writable_folder
        from splatseg_ns.tools.masks import dataset_images, run_masks

        parts = self.shard.split("/")
        if (len(parts) != 2 or not all(re.fullmatch(r"\s*[0-9]+\s*", p) for p in parts)  # not str.isdigit: '²'
                or not 0 <= int(parts[0]) < int(parts[1])):
            raise InputError(f"--shard {self.shard!r}: expected i/n with 0 <= i < n, e.g. 0/4")
        i, n = int(parts[0]), int(parts[1])
        bad = self.sam.problems("--sam.")
        if bad:
            raise InputError("; ".join(bad))
        runner = None
        if self.ray is not None:
            from splatseg_ns.core.extract.ray_extraction import RayOptions, ray_runner

            if n != 1:
                raise InputError(f"--ray with --shard {self.shard}: give one of them (Ray splits the scene itself)")
            if not self.ray.strip():
                raise InputError("--ray '': give auto, local or the cluster's address (host:port)")
            if not self.ray_cpus_per_worker > 0:
                raise InputError(f"--ray-cpus-per-worker {self.ray_cpus_per_worker}: give a number of CPUs > 0")
            at_least(self.ray_workers, "--ray-workers", 1)
            runner = ray_runner(RayOptions(self.ray, self.ray_cpus_per_worker, self.ray_workers))
        existing_folder(self.data, "--data", "a dataset folder with images/")
        if self.cache_dir is not None:
            writable_folder(self.cache_dir, "--cache-dir")
        images = dataset_images(self.data)
        if not images:
            raise InputError(f"--data {self.data}: no images found (looked in images/ and the folder itself).")
        run_masks(self.data, images, self.cache_dir, self.sam, dino=self.dino, clip=self.clip, shard=(i, n),
                  dino_config=self.dino_config, clip_config=self.clip_config, runner=runner)


@dataclass
class Bench:
    """Print the speed table: click-to-selection latency next to its floors, text query, feature render, export."""

    sizes: Optional[Tuple[int, ...]] = None
    """Numbers of Gaussians (default: tools.bench.DEFAULT_SIZES, 100k, 1M and 3M)."""
    device: Optional[str] = None
    """cuda or cpu (default: cuda when present)."""
    threads: Optional[int] = None
    """CPU threads for torch (1 gives steadier numbers on a busy machine)."""
    click_resolution: int = 1024
    """Square size of the view clicked in, for the click from the pixel."""
    render: bool = True
    """Also time the feature render at the click."""
    render_resolution: Optional[int] = None
    """Square size of the feature render (default: 128 on CPU, 512 on CUDA)."""
    render_cap: float = 15.0
    """Leave out renders predicted to take longer than this many seconds (a CPU run stays short)."""
    quick: bool = False
    """Shorter time budgets, and 100k and 1M Gaussians unless --sizes is given."""
    export: bool = True
    """Also time the PLY export."""

    def main(self) -> None:
        from splatseg_ns.tools.bench import DEFAULT_SIZES, QUICK_SIZES, format_table, speed_table
        from splatseg_ns.tools.checks import InputError, at_least, device_available, fits_in_memory

        sizes = (QUICK_SIZES if self.quick else DEFAULT_SIZES) if self.sizes is None else self.sizes
        if not sizes or min(sizes) < 1:
            raise InputError(f"--sizes {' '.join(map(str, sizes))}: give one or more numbers of Gaussians >= 1")
        fits_in_memory(600 * max(sizes), f"--sizes {max(sizes)}", "the largest scene (~600 B a Gaussian)")
        at_least(self.threads, "--threads", 1)
        at_least(self.click_resolution, "--click-resolution", 1)
        device_available(self.device)
        at_least(self.render_resolution, "--render-resolution", 8)
        rows = speed_table(sizes, self.device, click_resolution=self.click_resolution,
                           include_render=self.render, include_export=self.export, threads=self.threads,
                           render_resolution=self.render_resolution, render_cap_s=self.render_cap, quick=self.quick)
        print(format_table(rows))


Commands = Union[
    Annotated[Demo, tyro.conf.subcommand("demo")],
    Annotated[DemoData, tyro.conf.subcommand("demo-data")],
    Annotated[Select, tyro.conf.subcommand("select")],
    Annotated[Export, tyro.conf.subcommand("export")],
    Annotated[Eval, tyro.conf.subcommand("eval")],
    Annotated[MakeBenchmark, tyro.conf.subcommand("make-benchmark")],
    Annotated[Masks, tyro.conf.subcommand("masks")],
    Annotated[Bench, tyro.conf.subcommand("bench")],
]


def entrypoint() -> None:
    from splatseg_ns._torchvision_cpu import install

    install()
    command = tyro.cli(Commands)
    try:
        command.main()
    except _input_errors() as err:
        _fail(err)
    except KeyboardInterrupt:
        kept = getattr(command, "on_interrupt", "files are written atomically, so none is half-written")
        print(f"\ninterrupted; {kept}.", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    entrypoint()
