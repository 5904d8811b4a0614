"""A trained splatseg run, opened for the command-line tools (select, export, eval).

Glue only: loads the run with nerfstudio's `eval_setup` (any device), finds a view by its image
file name in the training or evaluation split, renders that view's features, and gives the
per-Gaussian tensors and the click index (`click_index`, once per level) the core modules work
on. A fingerprint of the Gaussians lets a selection file prove which run it was made on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from splatseg_ns.core.configs import load_run_config
from splatseg_ns.core.extract.masks import undistort_instance_map, undistort_pixels
from splatseg_ns.core.features import Level, level_features
from splatseg_ns.core.io.images import binary_mask, names_image, same_aspect
from splatseg_ns.core.io.selection_file import fingerprint
from splatseg_ns.core.render.contributors import PixelContributors
from splatseg_ns.core.segment.lifting import one_hot_labels, rendered_weights
from splatseg_ns.core.segment.losses import NonFiniteFeaturesError, check_finite_features
from splatseg_ns.core.segment.selection import ClickIndex


class RunError(ValueError):
    """A run, view or selection that cannot be used; the message says what to do."""


@dataclass
class View:
    """One image of the dataset: where it is, the camera that renders it, and how its file's pixels map there.

    Clicks and ground-truth masks are given in pixels of the image file (the contract). The rendered
    view can differ from the file: downscaled (`camera-res-scale-factor`) and, for cameras with lens
    distortion, undistorted and cropped by nerfstudio. `source_camera` is the camera before
    undistortion, at the rendered scale.
    """

    name: str
    split: str
    index: int
    image_path: Path
    camera: "object"  # nerfstudio Cameras of shape [1], as rendered
    file_size: Tuple[int, int]
    source_camera: "object"  # Cameras [1] before undistortion
    lens: Optional[Tuple[np.ndarray, np.ndarray, bool]] = None
    """(K, distortion, fisheye) of the source camera when it has lens distortion."""

    @property
    def size(self) -> Tuple[int, int]:
        """(width, height) of the rendered view in pixels."""
        return int(self.camera.width.item()), int(self.camera.height.item())

    def check_pixel(self, x: float, y: float) -> None:
        """A click must land on the image file."""
        width, height = self.file_size
        if not (0 <= x < width and 0 <= y < height):
            raise RunError(f"Click ({x}, {y}) is outside view {self.name} ({width}x{height} pixels).")

    def render_pixel(self, x: float, y: float) -> Tuple[int, int]:
        """The rendered view's pixel (column, row) that shows pixel (x, y) of the image file."""
        self.check_pixel(x, y)
        source = self.source_camera
        sw, sh = int(source.width.item()), int(source.height.item())
        point = np.array([[(x + 0.5) * sw / self.file_size[0] - 0.5, (y + 0.5) * sh / self.file_size[1] - 0.5]])
        if self.lens is not None:
            point = undistort_pixels(point, self.lens[0], self.lens[1], (sw, sh), fisheye=self.lens[2])
        column, row = (int(round(float(v))) for v in point[0])
        width, height = self.size
        if not (0 <= column < width and 0 <= row < height):
            raise RunError(
                f"Click ({x}, {y}) on {self.name} falls in the border that undistortion crops away; click further "
                "inside the image."
            )
        return column, row

    def read_mask(self, path: Path) -> np.ndarray:
        """bool [H, W]: a binary mask drawn on this view's image file (> 127 is in), as the rendered view sees it.

        Any size with the image's aspect ratio is accepted (resized nearest); a RunError names the file
        when it cannot be read or has another aspect ratio."""
        try:
            with Image.open(path) as im:
                mask = binary_mask(im)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise RunError(f"{path}: cannot read the mask ({err}); write it as a binary PNG (0 = out, 255 = in).") from err
        fw, fh = self.file_size
        if mask.shape != (fh, fw):
            if not same_aspect(mask.shape, (fh, fw)):
                raise RunError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image {self.name} is {fw}x{fh}, "
                               "another aspect ratio. Draw the mask on the image file itself (or a uniform rescale).")
            mask = np.array(Image.fromarray(mask).resize((fw, fh), Image.NEAREST))
        return self.mask_to_render(mask)

    def mask_to_render(self, mask: np.ndarray) -> np.ndarray:
        """A bool mask on the image file, carried into the rendered view (resized and undistorted, nearest)."""
        source = self.source_camera
        sw, sh = int(source.width.item()), int(source.height.item())
        if mask.shape != (sh, sw):
            mask = np.array(Image.fromarray(mask).resize((sw, sh), Image.NEAREST))
        if self.lens is not None:
            mask = undistort_instance_map(mask.astype(np.int32), *self.lens) > 0
        if mask.shape != self.size[::-1]:
            raise RunError(f"{self.name}: a mask carried into the view is {mask.shape}, the view {self.size[::-1]}.")
        return mask


class TrainedRun:
    """Loads `config.yml` of a splatseg run and serves what the tools need from it."""

    def __init__(self, config_path: Path, test_mode: Literal["test", "val", "inference"] = "test"):
        from splatseg_ns._torchvision_cpu import install

        install()
        from nerfstudio.utils.eval_utils import eval_setup

        config_path = Path(config_path)
        if not config_path.is_file():
            raise RunError(f"{config_path}: no such run config. Pass the config.yml that ns-train printed.")
        self.config_path = config_path.resolve()
        check_run_files(config_path)
        try:
            self.config, self.pipeline, self.checkpoint, self.step = eval_setup(config_path, test_mode=test_mode)
        except AssertionError as err:  # nerfstudio asserts on what it cannot find
            raise RunError(f"{config_path}: could not load the run (nerfstudio: {err or type(err).__name__}).") from err
        from nerfstudio.models.splatfacto import SplatfactoModel

        if not isinstance(self.pipeline.model, SplatfactoModel):
            raise RunError(f"{config_path} is a {self.config.method_name} run; splatseg tools need a splatseg or "
                           "splatfacto run.")
        self.model = self.pipeline.model
        self._click_indices: Dict[str, ClickIndex] = {}

    @property
    def has_features(self) -> bool:
        """A splatseg run: its Gaussians carry segmentation features (a splatfacto run's do not)."""
        return "seg_features" in self.model.gauss_params

    def require_features(self, what: str) -> None:
        if not self.has_features:
            raise RunError(f"{self.config_path} is a {self.config.method_name} run, whose Gaussians carry no segmentation "
                           f"features: {what} needs a splatseg run. Select by masks instead (splatseg select --masks DIR), "
                           f"or train features on it: ns-train splatseg --load-checkpoint ... .")

    @classmethod
    def from_pipeline(cls, config_path: Path, pipeline) -> "TrainedRun":
        """The run of a pipeline that is already loaded (in the tests: the trained fixture's), as it is now.

        No second load: the Gaussians are the live ones, so the fingerprint is that of this moment (make a
        new one after training changed them)."""
        run = cls.__new__(cls)
        run.config_path = Path(config_path).resolve()
        run.config = load_run_config(run.config_path.read_text()) if run.config_path.exists() else None
        run.pipeline, run.checkpoint = pipeline, None
        run.model = pipeline.model
        run.step = int(getattr(run.model, "step", 0))
        run._click_indices = {}
        return run

    @property
    def device(self) -> torch.device:
        return self.model.device

    @cached_property
    def fingerprint(self) -> str:
        """Identifies these exact Gaussians (`selection_file.fingerprint`)."""
        return fingerprint(self.model.means)

    def datasets(self) -> Dict[str, "object"]:
        dm = self.pipeline.datamanager
        return {"train": dm.train_dataset, "eval": dm.eval_dataset}

    def view_names(self) -> List[str]:
        """Every view's image file name, training split first."""
        return [Path(path).name for dataset in self.datasets().values() for path in dataset.image_filenames]

    def view(self, name: str) -> View:
        """The view whose image file is called `name`, training split first. A name with a folder
        (`test/r_0.png`) tells apart images of equal names in different folders (blender's splits)."""
        wanted = Path(name)
        names: List[str] = []
        for split, dataset in self.datasets().items():
            for index, path in enumerate(dataset.image_filenames):
                path = Path(path)
                names.append(path.name)
                if names_image(wanted, path):
                    return self._make_view(split, dataset, index, path)
        examples = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise RunError(f"No view named {name!r} in this run's dataset; views are named by image file, e.g. {examples}.")

    def _make_view(self, split: str, dataset, index: int, path: Path) -> View:
        from splatseg_ns.datamanager import lens_distortion

        dm = self.pipeline.datamanager
        if lens_distortion(dataset.cameras[index]) is not None:
            getattr(dm, "cached_train" if split == "train" else "cached_eval")  # nerfstudio undistorts on loading
        source = getattr(dm, "cameras_before_undistortion", {}).get(split, dataset.cameras)[index : index + 1]
        try:
            with Image.open(path) as im:
                file_size = im.size
        except OSError as err:
            raise RunError(f"{path}: cannot read the image of view {path.name} ({err}).") from err
        camera = dataset.cameras[index : index + 1].to(self.device)
        return View(name=path.name, split=split, index=index, image_path=path, camera=camera,
                    file_size=file_size, source_camera=source, lens=lens_distortion(source))

    @torch.no_grad()
    def render(self, view: View) -> Dict[str, torch.Tensor]:
        """The model's outputs for a view at full resolution (rgb, depth, accumulation, seg_features)."""
        return self.model.get_outputs_for_camera(view.camera)

    def level_features(self, features: torch.Tensor, level: Level) -> torch.Tensor:
        """The channels of `level` (`features.level_features`); an unknown level is a RunError."""
        try:
            return level_features(features, level, self.model.config.coarse_feature_dim)
        except ValueError as err:
            raise RunError(str(err)) from err

    def gaussian_features(self, level: Level) -> torch.Tensor:
        self.require_features("selecting by clicks or names")
        self.check_features_finite()
        return self.level_features(self.model.seg_features.detach(), level)

    def click_index(self, level: Level) -> ClickIndex:
        """The level's candidates and every Gaussian's label (`SplatsegModel.level_index`: its vote), once
        per run. A checkpoint without candidates gets them built from its views, one without votes gets
        them cast (a run trained before the votes existed, or saved before its last step)."""
        if level not in self._click_indices:
            self.gaussian_features(level)  # refuses diverged features, naming the run
            model = self.model
            if model.levels[level].centers.shape[0] == 0:
                print("This run's checkpoint holds no global candidates; building them from the training views...")
                model.refresh_global_candidates(self.pipeline.datamanager)
            if model.levels[level].centers.shape[0] == 0:
                raise RunError(
                    f"No {level} global candidates could be built for {self.config_path}: the features do not form "
                    "clusters. Train the feature stage longer (--max-num-iterations) or check the masks."
                )
            if model.config.vote.enabled and not model.has_votes(level):
                print("This run's checkpoint holds no votes; casting them over the training views...")
                model.compute_votes(self.pipeline.datamanager)
            self._click_indices[level] = model.level_index(level)
        return self._click_indices[level]

    @torch.no_grad()
    def mask_weights(self, view_masks: Sequence[Tuple[View, np.ndarray]]) -> torch.Tensor:
        """[N, 2]: each Gaussian's rendered weight inside and outside the given masks (bool [H, W] in render
        space), summed over their views (`core.segment.lifting.rendered_weights`)."""
        from splatseg_ns.model import render_values

        model, totals = self.model, torch.zeros(self.model.num_points, 2, device=self.device)
        mode, rasterizer = model.config.rasterize_mode, getattr(model.config, "rasterizer", "auto")
        for view, mask in view_masks:
            labels = torch.from_numpy(np.where(mask, 0, 1)).to(self.device)
            totals += rendered_weights(lambda values, v=view: render_values(model.gauss_params, v.camera, values, mode,
                                                                            rasterizer),
                                       model.num_points, one_hot_labels(labels, 2))
        return totals

    def pixel_contributors(self, view: View, x: float, y: float) -> PixelContributors:
        """The Gaussians blended at pixel (x, y) of the view's image file, and their weights (no render)."""
        column, row = view.render_pixel(x, y)
        return self.model.pixel_contributors(view.camera, column, row)

    def check_features_finite(self, name: str = "seg_features") -> None:
        """A run whose features diverged (NaN/inf) would select or export arbitrary segments: refuse, naming
        the run, as a RunError (the command line shows it without a traceback)."""
        try:
            check_finite_features(self.model.gauss_params[name].detach(), str(self.config_path), self.step, param=name)
        except NonFiniteFeaturesError as err:
            raise RunError(str(err)) from err


def check_run_files(config_path: Path) -> None:
    """What `eval_setup` needs and would only assert on: a config.yml that is a nerfstudio run's, its dataset
    and a checkpoint. A RunError says which is missing and what to do."""
    import yaml

    try:
        config = load_run_config(Path(config_path).read_text())
    except yaml.constructor.ConstructorError as err:
        if "refused tag" in str(err.problem):
            raise RunError(f"{config_path}: {err.problem} (line {err.problem_mark.line + 1}); this file was not written "
                           "by ns-train, or was changed. Nothing in it was run.") from err
        raise RunError(f"{config_path}: cannot read this run config ({' '.join(str(err).split())[:200]}); the file is "
                       "damaged. Pass the config.yml that ns-train wrote.") from err
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        detail = " ".join(str(err).split())[:200]
        raise RunError(f"{config_path}: cannot read this run config ({type(err).__name__}: {detail}); the file is "
                       "damaged. Pass the config.yml that ns-train wrote.") from err
    pipeline = getattr(config, "pipeline", None)
    if pipeline is None or not hasattr(config, "get_checkpoint_dir"):
        raise RunError(f"{config_path}: not a nerfstudio run config (a {type(config).__name__}). Pass the config.yml "
                       "that ns-train wrote.")
    data = getattr(getattr(pipeline, "datamanager", None), "data", None) or getattr(config, "data", None)
    if data is not None and not Path(data).exists():
        relative = "" if Path(data).is_absolute() else (" It is a relative path, resolved from the folder you run in: "
                                                        "run this command from the folder you trained in.")
        raise RunError(f"{config_path}: the run's dataset {data} does not exist.{relative}")
    checkpoints = Path(config.get_checkpoint_dir())
    if not any(checkpoints.glob("step-*.ckpt")):
        raise RunError(f"{config_path}: no checkpoint (step-*.ckpt) in {checkpoints}; the run saved none yet, or the "
                       "folder moved. Train until a checkpoint is saved, or fix output_dir in the config.")

