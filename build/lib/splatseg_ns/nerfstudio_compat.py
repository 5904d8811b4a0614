"""Workarounds for nerfstudio 1.1.5 (and the torch versions users run it with), each in one place.

Each function names the upstream issue it works around, so it can go when nerfstudio fixes it:
- checkpoints of any run fail to load with torch >= 2.6 (`allow_numpy_scalars_in_checkpoints`,
  nerfstudio issue 3683);
- splatfacto builds LPIPS in `populate_modules`, which downloads AlexNet weights, and moves the
  seed colours with a hard-coded `.cuda()` (`populate_splatfacto_modules`; nerfstudio issues
  2415 and 3290, PR 3750);
- a resumed run (`--load-dir`) steps optimizers of the Gaussians as they were before loading,
  so nothing trains (`rebind_optimizers`; reported as a crash in densification, nerfstudio issue
  3554), and trains max_num_iterations more steps instead of stopping there
  (`finish_at_max_iterations`, nerfstudio issue 3096, fixed after 1.1.5 by PR 3526);
- splatfacto's `get_viewmat` is `torch.compile`d, seconds per new graph on a CPU
  (`world_to_camera`, the same matrix without compilation; no upstream issue);
- caching images "cpu" pins memory, which needs an accelerator (`image_cache_device`; no
  upstream issue).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Dict, List

import torch
from torch.nn import Parameter


def allow_numpy_scalars_in_checkpoints() -> None:
    """Let torch >= 2.6 load nerfstudio checkpoints without turning off its safety checks.

    nerfstudio saves learning-rate scheduler state that holds numpy scalars; since torch 2.6
    `torch.load` defaults to `weights_only=True` and refuses them, so `ns-viewer`, `ns-export` and
    resuming fail for every run (nerfstudio issue 3683). Allow-listing exactly the numpy scalar
    and dtype types keeps `weights_only` on for everything else.
    """
    import numpy as np

    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4 loads these anyway
        return
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    add_safe_globals([scalar, np.dtype, *dtype_classes])


class LazyLPIPS(torch.nn.Module):
    """LPIPS that is built on first use; offline (weights not downloadable) it warns once and gives NaN.

    Only evaluation uses LPIPS, so building the model must not need its download (nerfstudio
    issue 2415: the AlexNet weights are fetched when the model is constructed).
    """

    def __init__(self, **kwargs):
        super().__init__()
        self._kwargs = kwargs
        self._metric: List[torch.nn.Module] = []  # a list keeps it out of the state dict
        self._failed = False

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self._metric and not self._failed:
            try:
                self._metric.append(_REAL_LPIPS(**self._kwargs).to(preds.device))
            except Exception as err:  # offline, or torchvision ops missing
                self._failed = True
                warnings.warn(f"LPIPS unavailable ({err}); reporting NaN. Run once online to cache its weights.", stacklevel=2)
        if self._failed:
            return torch.tensor(float("nan"))
        return self._metric[0](preds, target)


_REAL_LPIPS = None


@contextlib.contextmanager
def _lazy_lpips():
    """Make splatfacto's `populate_modules` build `LazyLPIPS` instead of the real metric."""
    global _REAL_LPIPS
    import torchmetrics.image.lpip as lpip_module

    _REAL_LPIPS = _REAL_LPIPS or lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = LazyLPIPS
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = _REAL_LPIPS


def populate_splatfacto_modules(model, populate: Callable[[], None]) -> None:
    """Run splatfacto's `populate_modules` (`populate`) on any device and offline.

    LPIPS is built lazily (`LazyLPIPS`, nerfstudio issue 2415), and the seed colours, which
    splatfacto moves with a hard-coded `.cuda()` (nerfstudio issue 3290, PR 3750), are held back
    and set here instead, exactly as splatfacto would have set them.
    """
    from nerfstudio.models.splatfacto import RGB2SH

    seed_colours = None
    if model.seed_points is not None and not model.config.random_init:
        points, seed_colours = model.seed_points
        model.seed_points = (points, seed_colours[:0])
    with _lazy_lpips():
        populate()
    if seed_colours is not None:
        model.seed_points = (model.seed_points[0], seed_colours)
        if seed_colours.shape[0] > 0:
            rgb = seed_colours.float() / 255.0
            dc = RGB2SH(rgb) if model.config.sh_degree > 0 else torch.logit(rgb, eps=1e-10)
            model.gauss_params["features_dc"] = Parameter(dc)
            model.gauss_params["features_rest"] = Parameter(torch.zeros_like(model.features_rest))


def rebind_optimizers(optimizers: Dict[str, torch.optim.Optimizer], groups: Dict[str, List[Parameter]]) -> None:
    """Point each optimizer at the model's current Parameter, carrying its loaded state along.

    Loading a checkpoint (`--load-dir`) replaces every Gaussian tensor with a new Parameter of the
    checkpoint's size, after nerfstudio built the optimizers on the old ones: without this the
    resumed run's optimizers step tensors the model no longer uses and nothing trains (and
    densification meets optimizer state of the wrong size, nerfstudio issue 3554).
    """
    for name, params in groups.items():
        optimizer = optimizers.get(name)
        if optimizer is None:
            continue
        old, new = optimizer.param_groups[0]["params"][0], params[0]
        if old is new:
            continue
        optimizer.param_groups[0]["params"] = [new]
        state = optimizer.state.pop(old, None)
        if state is not None and all(v.shape == new.shape for v in state.values() if torch.is_tensor(v) and v.dim() > 0):
            optimizer.state[new] = state


def finish_at_max_iterations(trainer) -> None:
    """A resumed run (`--load-dir`) trains up to step --max-num-iterations, not that many steps more.

    nerfstudio 1.1.5 runs max_num_iterations steps from the loaded step (nerfstudio issue 3096,
    fixed after 1.1.5 by PR 3526); splatseg's two stages and GFL schedule are fixed in absolute
    steps, so an interrupted run must resume to the same end as an uninterrupted one. The trainer
    reads the count when training starts, after the model's callbacks are set up.
    """
    start, total = int(trainer._start_step), int(trainer.config.max_num_iterations)
    if start == 0:
        return
    if start >= total:
        raise ValueError(
            f"The checkpoint loaded is at step {start - 1}, already the end of --max-num-iterations {total}. "
            "Raise --max-num-iterations to train longer, or use the run as it is."
        )
    print(f"splatseg: resuming at step {start} of {total}; training the remaining {total - start} steps.")
    trainer.config.max_num_iterations = total - start


def progress_counts_to(total: int, step: int) -> None:
    """Training callback: the progress line of a resumed run counts to the run's end (see above)."""
    from nerfstudio.utils import writer

    writer.GLOBAL_BUFFER["max_iter"] = total


def world_to_camera(camera_to_world: torch.Tensor) -> torch.Tensor:
    """[C, 3, 4] nerfstudio (OpenGL) camera-to-world -> [C, 4, 4] OpenCV world-to-camera, as gsplat wants.

    splatfacto's `get_viewmat`, without its `torch.compile` (seconds per new graph on a CPU).
    """
    R = camera_to_world[:, :3, :3] * torch.tensor([1.0, -1.0, -1.0], device=camera_to_world.device)
    T = camera_to_world[:, :3, 3:4]
    viewmat = torch.zeros(R.shape[0], 4, 4, device=R.device, dtype=R.dtype)
    viewmat[:, 3, 3] = 1.0
    viewmat[:, :3, :3] = R.transpose(1, 2)
    viewmat[:, :3, 3:4] = -R.transpose(1, 2) @ T
    return viewmat


def image_cache_device(requested: str) -> str:
    """FullImageDatamanager's image cache device that works here: "cpu" caching pins memory, which
    needs an accelerator; without one, "gpu" caching keeps the images on the datamanager's device
    (the CPU) the same way."""
    return "gpu" if requested == "cpu" and not torch.cuda.is_available() else requested
