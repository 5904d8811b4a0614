"""The splatseg model: splatfacto plus a per-Gaussian segmentation feature.

Glue only: the method's wiring. What it adds to `SplatfactoModel`:
- `gauss_params["seg_features"]`: [N, seg_feature_dim] (coarse = the first `coarse_feature_dim`
  channels, fine = all of them, `core.features`), so densification, pruning and checkpoints
  carry it along;
- two stages in one run: colour and geometry on splatfacto's schedule until
  `feature_stage_start`, then only the features, with everything else frozen (Click-Gaussian),
  trained by `core.segment.losses` and `core.segment.global_candidates` (GFL); at the last step every Gaussian
  votes for its label (`core.segment.lifting`), which selections, segments and exports use;
- a rasteriser chosen by device: gsplat's CUDA kernels on a GPU, `core.render.rasterize` on CPU, with
  no `.cuda()` on the path;
- `self.splatseg`, the web viewer's panel (`viewer.py`), whose display `get_outputs` applies.
What works around nerfstudio 1.1.5 itself is `nerfstudio_compat`.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Type, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.splatfacto import SplatfactoModel, SplatfactoModelConfig
from torch.nn import Parameter

from splatseg_ns.core.configs import LoadsOlderConfigs
from splatseg_ns.core.features import LEVELS, init_features, level_dim, level_features
from splatseg_ns.core.render.contributors import GaussianGrid, PixelContributors, pixel_contributors
from splatseg_ns.core.segment.global_candidates import (
    GFLConfig,
    GlobalCandidates,
    build_global_candidates,
    candidate_embeddings,
    two_level_gfl_loss,
)
from splatseg_ns.core.segment.level_state import level_states, upgrade_state_dict
from splatseg_ns.core.segment.lifting import VoteConfig, Votes, cast_votes, resize_nearest
from splatseg_ns.core.segment.losses import (
    check_finite_features,
    dino_distillation_loss,
    feature_norm_2d_loss,
    feature_norm_3d_loss,
    knn_indices,
    mask_interiors,
    sample_pixels,
    spatial_smoothness_loss,
    two_level_contrastive_loss,
)
from splatseg_ns.core.segment.schedule import FeatureSchedule
from splatseg_ns.core.segment.selection import ClickIndex, precompute_click_index
from splatseg_ns.nerfstudio_compat import (
    allow_numpy_scalars_in_checkpoints,
    finish_at_max_iterations,
    populate_splatfacto_modules,
    progress_counts_to,
    rebind_optimizers,
    world_to_camera,
)

allow_numpy_scalars_in_checkpoints()


@dataclass
class SplatsegModelConfig(LoadsOlderConfigs, SplatfactoModelConfig):
    """Splatfacto with Click-Gaussian segmentation features (arXiv 2407.11793)."""

    _target: Type = field(default_factory=lambda: SplatsegModel)
    seg_feature_dim: int = 24
    """Channels of the per-Gaussian segmentation feature (coarse part + fine rest)."""
    coarse_feature_dim: int = 12
    """Leading channels that form the coarse (whole-object) feature; the fine feature is all channels."""
    feature_stage_start: int = 30000
    """Step at which colour and geometry freeze and the segmentation features start training.
    Set it to the colour run's length; steps beyond it (up to --max-num-iterations) train features."""
    num_sampled_pixels: int = 10000
    """Pixels sampled per step for the contrastive loss (importance-sampled by mask size)."""
    margin_coarse: float = 0.5
    """Cosine margin below which pairs of different coarse masks are no longer pushed apart."""
    margin_fine: float = 0.75
    """Cosine margin below which pairs of different fine masks are no longer pushed apart."""
    contrastive_negative_weight: float = 0.1
    """Weight of the push (negative) term relative to the pull term."""
    fine_push_within_objects: bool = True
    """Average the fine push over pairs of parts of one coarse mask only, not over every pair of
    different parts (Click-Gaussian's mean, in which pairs of two objects, already apart, dilute it);
    False gives Click-Gaussian's mean."""
    mask_border_px: int = 3
    """Pixels within this many pixels of another mask's border take part in no contrastive pair (a mask
    thinner than that keeps its deepest pixels): automatic masks' borders are off by 1-3 px, and masks
    bled over their neighbours pull the objects together until every feature is one (tabletop, strong
    mask noise: every candidate merged into one; 0 gives Click-Gaussian's loss on every masked pixel)."""
    pull_trim: float = 0.0
    """Share of each mask's sampled pixels, those least like the mask's mean feature, that the pull leaves
    out: a mask over two things (a mug merged with the table it stands on) does not pull the minority that
    the other views tell apart into the majority; 0 pulls every pair (Click-Gaussian)."""
    push_block: int = 1024
    """The push averages over the negative pairs within blocks of this many sampled pixels (they come in
    random order: a uniform sample of all pairs, at num-sampled-pixels x push-block cost instead of its
    square); 0 takes every pair."""
    norm_3d_weight: float = 0.2
    """Weight of the 3D norm term: per-Gaussian coarse and rest parts near unit norm."""
    norm_2d_weight: float = 0.2
    """Weight of the 2D norm term: rendered coarse norm near 1, fine near sqrt(2)."""
    spatial_weight: float = 0.5
    """Weight of the spatial smoothness term: features agree with the nearest Gaussians."""
    spatial_neighbours: int = 5
    """Nearest Gaussians each sampled Gaussian is compared with."""
    spatial_samples: int = 100_000
    """Gaussians sampled per step for the spatial smoothness term."""
    dino_feature_dim: int = 0
    """Channels of a per-Gaussian DINO feature distilled from the cached DINO maps (0: none). Set it to
    --pipeline.datamanager.dino-config.num-components together with --pipeline.datamanager.dino True."""
    dino_weight: float = 1.0
    """Weight of the DINO distillation term (1 - cosine between rendered and cached DINO features)."""
    gfl: GFLConfig = field(default_factory=GFLConfig)
    """Global Feature-guided Learning: global candidates from all views, pull/push per Gaussian."""
    vote: VoteConfig = field(default_factory=VoteConfig)
    """Mask lifting: every Gaussian's label from its rendered weight in each candidate's masks."""
    rasterizer: Literal["auto", "gsplat", "torch"] = "auto"
    """'auto': gsplat's CUDA kernels on a GPU, the pure-torch rasteriser on CPU."""


UNUSED_MODEL_OPTIONS = ("enable_collider", "collider_params", "loss_coefficients", "eval_num_rays_per_chunk", "prompt")
"""Fields of nerfstudio's `ModelConfig` that splatfacto (and so splatseg) never reads: refused when changed."""


def pick_rasterizer(choice: str, device: torch.device):
    """gsplat on CUDA, the pure-torch rasteriser otherwise (gsplat has no CPU path)."""
    if choice == "gsplat" or (choice == "auto" and device.type == "cuda"):
        from gsplat import rasterization

        return rasterization
    from splatseg_ns.core.render.rasterize import rasterize

    return rasterize


def camera_geometry(gaussians, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int,
                    rasterize_mode: str = "classic") -> Dict:
    """The rasteriser's arguments for the Gaussians `gaussians(name)` returns (splatfacto's parameters:
    log scales, opacity logits), seen by one camera."""
    return dict(
        means=gaussians("means"),
        quats=gaussians("quats"),
        scales=torch.exp(gaussians("scales")),
        opacities=torch.sigmoid(gaussians("opacities")).squeeze(-1),
        viewmats=viewmat,
        Ks=K,
        width=width,
        height=height,
        packed=False,
        near_plane=0.01,
        far_plane=1e10,
        sparse_grad=False,
        rasterize_mode=rasterize_mode,
    )


def render_features(rasterize, geometry: Dict, features: torch.Tensor) -> torch.Tensor:
    """Alpha-blend per-Gaussian values like colour, on a zero background: [H, W, D]."""
    rendered, _, _ = rasterize(colors=features, render_mode="RGB", sh_degree=None, absgrad=False, **geometry)
    return rendered.squeeze(0)


def render_values(gaussians: Dict[str, torch.Tensor], camera: Cameras, values: torch.Tensor,
                  rasterize_mode: str = "classic", rasterizer: str = "auto") -> torch.Tensor:
    """Per-Gaussian values [N, C] of any splatfacto-style Gaussians (`gauss_params`) alpha-blended into
    one camera's image [H, W, C]; differentiable in `values` (the geometry is detached)."""
    device = gaussians["means"].device
    params = {name: gaussians[name].detach() for name in ("means", "quats", "scales", "opacities")}
    geometry = camera_geometry(params.__getitem__, world_to_camera(camera.camera_to_worlds.to(device)),
                               camera.get_intrinsics_matrices().to(device), int(camera.width.item()),
                               int(camera.height.item()), rasterize_mode)
    return render_features(pick_rasterizer(rasterizer, device), geometry, values.to(device))


class SplatsegModel(SplatfactoModel):
    """Splatfacto whose Gaussians also carry a two-level segmentation feature."""

    config: SplatsegModelConfig

    def populate_modules(self):
        if self.config.coarse_feature_dim >= self.config.seg_feature_dim:
            raise ValueError(
                f"coarse_feature_dim ({self.config.coarse_feature_dim}) must be smaller than "
                f"seg_feature_dim ({self.config.seg_feature_dim}): the fine feature extends the coarse one."
            )
        from nerfstudio.models.base_model import ModelConfig

        for option in UNUSED_MODEL_OPTIONS:  # NeRF options of nerfstudio's base config, which splatfacto never reads
            if getattr(self.config, option) != getattr(ModelConfig(), option):
                raise ValueError(f"--pipeline.model.{option.replace('_', '-')} {getattr(self.config, option)!r}: "
                                 "splatfacto does not use it (a NeRF option); leave it out.")
        if self.config.n_split_samples != 2:  # splatfacto 1.1.5 never hands it to gsplat's DefaultStrategy
            raise ValueError(f"--pipeline.model.n-split-samples {self.config.n_split_samples}: nerfstudio 1.1.5's "
                             "splatfacto ignores this option (gsplat's DefaultStrategy always splits a Gaussian in 2); "
                             "leave it at 2.")
        populate_splatfacto_modules(self, super().populate_modules)
        self.gauss_params["seg_features"] = Parameter(init_features(self.num_points, self.config.seg_feature_dim))
        if self.config.dino_feature_dim > 0:
            self.gauss_params["dino_features"] = Parameter(0.01 * torch.randn(self.num_points, self.config.dino_feature_dim))
        # Densification must be over before the Gaussians' features start training.
        self.strategy.refine_stop_iter = min(self.strategy.refine_stop_iter, self.config.feature_stage_start)
        self.schedule = FeatureSchedule(self.config.feature_stage_start, self.config.gfl, self.config.vote)
        self.step = 0
        self._neighbours: Optional[torch.Tensor] = None  # kNN of the frozen means, for the smoothness term
        self.candidates: Optional[GlobalCandidates] = None  # GFL's global candidates, once built
        # per level: the candidates' centres, CLIP embeddings and the votes, riding in checkpoints for the tools
        self.levels = level_states({level: self._level_dim(level) for level in LEVELS})
        from splatseg_ns.viewer import SplatsegViewer

        self.splatseg = SplatsegViewer(self)  # the viewer panel: click/name selection, display modes, export

    def _level_dim(self, level: str) -> int:
        return level_dim(level, self.config.seg_feature_dim, self.config.coarse_feature_dim)

    def push_margin(self, level: str) -> float:
        """The level's contrastive push margin tau_l."""
        return self.config.margin_coarse if level == "coarse" else self.config.margin_fine

    def has_votes(self, level: str) -> bool:
        return self.levels[level].has_votes(self.num_points)

    def uses_votes(self, level: str) -> bool:
        """Whether the level's labels are the votes (they are, once computed, unless votes are turned off)."""
        return self.config.vote.enabled and self.has_votes(level)

    def weak_below(self, level: str) -> float:
        """Members of a candidate less sure than this are weak (an export drops them): the vote share
        with votes, else the push margin (features below it are trained as non-members)."""
        return self.config.vote.weak_share if self.uses_votes(level) else self.push_margin(level)

    @torch.no_grad()
    def level_index(self, level: str) -> Optional[ClickIndex]:
        """The level's candidates and every Gaussian's label and how sure it is: its vote (and vote share)
        when the run has votes, else its nearest candidate in feature space (and cosine). None without
        candidates."""
        state = self.levels[level]
        centers = state.centers
        if centers.shape[0] == 0:
            return None
        if self.uses_votes(level):
            return ClickIndex.from_assignment(state.vote_labels, state.vote_share, centers)
        return precompute_click_index(level_features(self.seg_features.detach(), level, self.config.coarse_feature_dim),
                                      centers)

    @torch.no_grad()
    def pixel_contributors(self, camera: Cameras, column: int, row: int,
                           opacities: Optional[torch.Tensor] = None) -> PixelContributors:
        """The Gaussians blended at pixel (column, row) of `camera`'s render, and their weights (no render).
        `opacities`: logits to use instead of the Gaussians' own (a display that hides some)."""
        scales, grid = self._click_geometry()
        logits = self.opacities if opacities is None else opacities
        return pixel_contributors(
            self.means, self.quats, scales, torch.sigmoid(logits).squeeze(-1),
            world_to_camera(camera.camera_to_worlds.to(self.device))[0], camera.get_intrinsics_matrices()[0].to(self.device),
            int(camera.width.item()), int(camera.height.item()), column, row,
            rasterize_mode=self.config.rasterize_mode, grid=grid,
        )

    def _click_geometry(self):
        """(scales, `GaussianGrid`) of the Gaussians as they are, kept while they do not change (the feature
        stage freezes them), so a click costs a few cells' Gaussians, not a pass over all."""
        key = (self.num_points, self.means.data_ptr(), self.means._version, self.scales.data_ptr(), self.scales._version)
        if getattr(self, "_click_cache", (None,))[0] != key:
            scales = torch.exp(self.scales.detach())
            self._click_cache = (key, scales, GaussianGrid.build(self.means.detach(), scales.amax(dim=-1)))
        return self._click_cache[1:]

    @property
    def seg_features(self) -> torch.Tensor:
        return self.gauss_params["seg_features"]

    @property
    def in_feature_stage(self) -> bool:
        return self.schedule.in_feature_stage(self.step)

    def load_state_dict(self, dict, **kwargs):  # type: ignore
        # A plain splatfacto checkpoint has no features: start them fresh (feature-only training).
        if "gauss_params.seg_features" not in dict and "gauss_params.means" in dict:
            n = dict["gauss_params.means"].shape[0]
            dict["gauss_params.seg_features"] = init_features(n, self.config.seg_feature_dim)
        if self.config.dino_feature_dim > 0 and "gauss_params.dino_features" not in dict and "gauss_params.means" in dict:
            dict["gauss_params.dino_features"] = torch.zeros(dict["gauss_params.means"].shape[0], self.config.dino_feature_dim)
        upgrade_state_dict(dict, self.levels)  # older key names; candidate counts differ from run to run
        result = super().load_state_dict(dict, **kwargs)
        if self.levels["coarse"].centers.shape[0] or self.levels["fine"].centers.shape[0]:
            # A resumed run keeps pulling towards its candidates at once, not only after the next refresh.
            self.candidates = GlobalCandidates.from_centers(
                self.levels["coarse"].centers, self.levels["fine"].centers, self.config.coarse_feature_dim
            )
        return result

    def get_gaussian_param_groups(self) -> Dict[str, List[Parameter]]:
        groups = super().get_gaussian_param_groups()
        groups["seg_features"] = [self.gauss_params["seg_features"]]
        if "dino_features" in self.gauss_params:
            groups["dino_features"] = [self.gauss_params["dino_features"]]
        return groups

    def get_training_callbacks(self, training_callback_attributes: TrainingCallbackAttributes) -> List[TrainingCallback]:
        trainer = training_callback_attributes.trainer
        if trainer is not None and trainer.config.max_num_iterations <= self.config.feature_stage_start:
            warnings.warn(
                f"--max-num-iterations {trainer.config.max_num_iterations} <= feature_stage_start "
                f"{self.config.feature_stage_start}: the segmentation features will not be trained. Raise "
                "--max-num-iterations or lower --pipeline.model.feature-stage-start.", stacklevel=2
            )
        callbacks = super().get_training_callbacks(training_callback_attributes)
        pipeline = training_callback_attributes.pipeline
        if trainer is not None and trainer._start_step > 0:
            total = trainer.config.max_num_iterations
            finish_at_max_iterations(trainer)
            callbacks.append(  # the progress line counts to the run's end, not to the number of steps left
                TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], progress_counts_to,
                                 iters=(trainer._start_step,), args=[total])
            )
        if training_callback_attributes.optimizers is not None:
            rebind_optimizers(training_callback_attributes.optimizers.optimizers, self.get_gaussian_param_groups())
        if pipeline is not None and trainer is not None:
            last_step = trainer.config.max_num_iterations + trainer._start_step - 1
            self.schedule = dataclasses.replace(self.schedule, last_step=last_step)
            callbacks.append(
                TrainingCallback([TrainingCallbackLocation.BEFORE_TRAIN_ITERATION], self._on_schedule,
                                 args=[pipeline.datamanager])
            )
            callbacks.append(
                TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], self._refuse_diverged_features,
                                 args=[trainer.config.steps_per_save])
            )
        return callbacks

    def _on_schedule(self, datamanager, step: int) -> None:
        if self.schedule.refresh_candidates(step):
            self.refresh_global_candidates(datamanager)
        if self.schedule.cast_votes(step):
            self.compute_votes(datamanager)

    def _refuse_diverged_features(self, steps_per_save: int, step: int) -> None:
        """Stop before a checkpoint holds NaN/inf features (the last good one is kept)."""
        if self.schedule.check_features(step, steps_per_save):
            for name in ("seg_features", "dino_features"):
                if name in self.gauss_params:
                    check_finite_features(
                        self.gauss_params[name].detach(),
                        f"Training stopped before saving the checkpoint of step {step} (the last one saved is kept)",
                        step, param=name,
                    )

    @torch.no_grad()
    def refresh_global_candidates(self, datamanager) -> GlobalCandidates:
        """Render every training view, average features per mask, cluster them (Click-Gaussian Sec. 3.3)."""
        check_finite_features(self.seg_features.detach(), "Global candidates cannot be built", self.step)
        cameras = datamanager.train_dataset.cameras

        def views():
            for index, data in enumerate(datamanager.cached_train):
                features = self.render_seg_features(cameras[index : index + 1].to(self.device))
                yield features, data["coarse_mask"].to(self.device), data["fine_mask"].to(self.device)

        candidates = build_global_candidates(
            views(), self.config.coarse_feature_dim, self.config.gfl, num_views=len(cameras)
        )
        self.set_candidates(candidates)
        cached = datamanager.cached_train
        if cached and "clip_coarse_ids" in cached[0]:  # text queries: candidates gather their masks' CLIP embeddings
            for level in ("coarse", "fine"):
                per_view = [(data[f"clip_{level}_ids"], data[f"clip_{level}_emb"]) for data in cached]
                embeddings = candidate_embeddings(candidates.level(level), per_view)
                self.levels[level].clip = embeddings.to(self.device)
        return candidates

    def set_candidates(self, candidates: GlobalCandidates) -> None:
        self.candidates = candidates.to(self.device)
        for level in LEVELS:
            self.levels[level].centers = self.candidates.level(level).centers.detach().clone()
            self.levels[level].clear_votes()  # they were cast for the previous candidates

    @torch.no_grad()
    def compute_votes(self, datamanager) -> Dict[str, Votes]:
        """Mask lifting over every training view (`core.segment.lifting.cast_votes`): one feature render and one
        weight pass (both levels at once) per view; the labels are stored per level."""
        check_finite_features(self.seg_features.detach(), "Votes cannot be cast", self.step)
        cameras = datamanager.train_dataset.cameras
        rasterize = pick_rasterizer(self.config.rasterizer, self.means.device)

        def views():
            for index, data in enumerate(datamanager.cached_train):
                camera = cameras[index : index + 1].to(self.device)
                geometry = self._geometry(self.gauss_params.__getitem__, world_to_camera(camera.camera_to_worlds),
                                          camera.get_intrinsics_matrices().to(self.device), int(camera.width.item()),
                                          int(camera.height.item()))
                features = render_features(rasterize, geometry, self.seg_features.detach())
                yield (lambda values, geometry=geometry: render_features(rasterize, geometry, values), features,
                       {level: data[f"{level}_mask"] for level in LEVELS})

        centers = {level: self.levels[level].centers for level in LEVELS}
        votes = cast_votes(views(), self.means.detach(), centers, self.config.coarse_feature_dim, self.config.vote)
        for level in LEVELS:
            self.levels[level].vote_labels, self.levels[level].vote_share = votes[level].labels, votes[level].share
        return votes

    def step_post_backward(self, step):
        if not self.in_feature_stage:  # no densification while features train
            super().step_post_backward(step)
        elif getattr(self, "info", None) or self.strategy_state.get("grad2d") is not None:
            # Densification is over: its statistics and the last colour render's buffers only hold memory
            # (~0.56 GB at 3M Gaussians, benchmarks/RESULTS.md "Scale plan").
            self.info = {}
            self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[torch.Tensor, List]]:
        if not isinstance(camera, Cameras):
            return {}
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            camera_to_world = self.camera_optimizer.apply_to_camera(camera)
        else:
            camera_to_world = camera.camera_to_worlds

        keep = None
        if self.crop_box is not None and not self.training:
            keep = self.crop_box.within(self.means).squeeze()
            if keep.sum() == 0:
                return self.get_empty_outputs(int(camera.width.item()), int(camera.height.item()), self.background_color)

        # The viewer's display (selection only, highlight, segments, ...) swaps in new tensors, never edits gauss_params.
        display = {} if self.training else self.splatseg.display_overrides()

        def gaussians(name: str) -> torch.Tensor:
            param = display.get(name, self.gauss_params[name])
            return param if keep is None else param[keep]

        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        viewmat = world_to_camera(camera_to_world)
        K = camera.get_intrinsics_matrices().to(self.device)
        W, H = int(camera.width.item()), int(camera.height.item())
        self.last_size = (H, W)
        camera.rescale_output_resolution(scale)

        geometry = self._geometry(gaussians, viewmat, K, W, H)
        rasterize = pick_rasterizer(self.config.rasterizer, self.means.device)
        feature_training = self.training and self.in_feature_stage
        outputs: Dict[str, Union[torch.Tensor, List]] = {}
        if not feature_training:
            outputs.update(self._render_rgb(rasterize, geometry, gaussians, camera))
        if feature_training or not self.training:
            if feature_training:  # geometry is frozen: no gradient reaches it
                geometry = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in geometry.items()}
            features = render_features(rasterize, geometry, gaussians("seg_features"))
            outputs["seg_features"] = features
            if feature_training and "dino_features" in self.gauss_params:
                outputs["dino_features"] = render_features(rasterize, geometry, gaussians("dino_features"))
            if not self.training:
                outputs["seg_coarse"] = level_features(features, "coarse", self.config.coarse_feature_dim)
        return outputs

    def _geometry(self, gaussians, viewmat: torch.Tensor, K: torch.Tensor, width: int, height: int) -> Dict:
        return camera_geometry(gaussians, viewmat, K, width, height, self.config.rasterize_mode)

    @torch.no_grad()
    def render_seg_features(self, camera: Cameras) -> torch.Tensor:
        """Features of one camera at its full resolution, without gradients and without touching training state."""
        return self.render_values(camera, self.seg_features)

    @torch.no_grad()
    def render_values(self, camera: Cameras, values: torch.Tensor,
                      gaussians: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Alpha-blend any per-Gaussian values [N, C] into one camera's image [H, W, C] (features, selection
        masks), of this model's Gaussians or of `gaussians` (means, quats, scales, opacities as stored)."""
        return render_values(gaussians or self.gauss_params, camera, values, self.config.rasterize_mode,
                             self.config.rasterizer)

    def _render_rgb(self, rasterize, geometry, gaussians, camera: Cameras) -> Dict[str, torch.Tensor]:
        """Splatfacto's colour render (SH schedule, background, bilateral grid while training, depth), on the
        chosen rasteriser."""
        colors = torch.cat((gaussians("features_dc")[:, None, :], gaussians("features_rest")), dim=1)
        if self.config.sh_degree > 0:
            sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors = torch.sigmoid(colors).squeeze(1)
            sh_degree = None
        render_mode = "RGB+ED" if (self.config.output_depth_during_training or not self.training) else "RGB"
        render, alpha, self.info = rasterize(
            colors=colors, render_mode=render_mode, sh_degree=sh_degree, absgrad=self.strategy.absgrad, **geometry
        )
        if self.training:
            self.strategy.step_pre_backward(self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info)
        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], geometry["height"], geometry["width"])
        depth = None
        if render_mode == "RGB+ED":
            depth = torch.where(alpha > 0, render[..., 3:4], render[..., 3:4].detach().max()).squeeze(0)
        if not self.training:
            background = background.expand(geometry["height"], geometry["width"], 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}

    def get_metrics_dict(self, outputs, batch) -> Dict[str, torch.Tensor]:
        if "rgb" in outputs:
            return super().get_metrics_dict(outputs, batch)
        return {"gaussian_count": self.num_points}

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, torch.Tensor]:
        if not (self.training and self.in_feature_stage):
            return super().get_loss_dict(outputs, batch, metrics_dict)
        return self.feature_loss_dict(outputs, batch)

    def feature_loss_dict(self, outputs: Dict[str, torch.Tensor], batch) -> Dict[str, torch.Tensor]:
        """Click-Gaussian's feature-stage losses: contrastive + 2D norm on sampled pixels of the rendered
        map [H, W, D]; 3D norm, spatial smoothness and (once candidates exist) GFL on the Gaussians; DINO
        distillation when the Gaussians carry a DINO feature."""
        features = outputs["seg_features"]
        H, W = features.shape[:2]
        coarse = batch["coarse_mask"].to(self.device)
        fine = batch["fine_mask"].to(self.device)
        if coarse.shape[:2] != (H, W):  # resolution schedule: follow the render's size
            coarse, fine = (resize_nearest(m, H, W) for m in (coarse, fine))
        coarse, fine = (mask_interiors(m, self.config.mask_border_px) for m in (coarse, fine))
        index = sample_pixels(coarse, fine, self.config.num_sampled_pixels)
        sampled = features.reshape(-1, features.shape[-1])[index]
        coarse_dim = self.config.coarse_feature_dim
        losses = two_level_contrastive_loss(
            sampled,
            coarse.reshape(-1)[index],
            fine.reshape(-1)[index],
            coarse_dim=coarse_dim,
            margin_coarse=self.config.margin_coarse,
            margin_fine=self.config.margin_fine,
            negative_weight=self.config.contrastive_negative_weight,
            push_block=self.config.push_block,
            fine_push_within_objects=self.config.fine_push_within_objects,
            pull_trim=self.config.pull_trim,
        )
        gaussians = self.seg_features
        losses["norm_2d"] = feature_norm_2d_loss(sampled, coarse_dim, weight=self.config.norm_2d_weight)
        losses["norm_3d"] = feature_norm_3d_loss(gaussians, coarse_dim, weight=self.config.norm_3d_weight)
        if self.config.spatial_weight > 0:
            if self._neighbours is None or self._neighbours.shape[0] != self.num_points:
                self._neighbours = knn_indices(self.means.detach(), self.config.spatial_neighbours)  # means are frozen
            losses["spatial"] = spatial_smoothness_loss(
                gaussians, self._neighbours, self.config.spatial_samples, weight=self.config.spatial_weight
            )
        if self.candidates is not None and self.schedule.gfl_active(self.step):
            losses.update(two_level_gfl_loss(gaussians, self.candidates, self.config.gfl,
                                             self.config.margin_coarse, self.config.margin_fine))
        if "dino_features" in self.gauss_params:
            losses["dino"] = self.dino_loss(batch, outputs["dino_features"])
        return losses

    def dino_loss(self, batch, rendered: torch.Tensor) -> torch.Tensor:
        """`core.segment.losses.dino_distillation_loss` against the batch's cached DINO map, checking the run's flags."""
        if "dino" not in batch:
            raise ValueError(
                "--pipeline.model.dino-feature-dim is set but the batches carry no DINO maps: also pass "
                "--pipeline.datamanager.dino True (and dino-config.num-components equal to dino-feature-dim)."
            )
        target = batch["dino"].to(self.device).float()  # [h, w, k]
        if target.shape[-1] != rendered.shape[-1]:
            raise ValueError(f"DINO maps have {target.shape[-1]} channels but dino-feature-dim is "
                             f"{rendered.shape[-1]}; make them equal.")
        return dino_distillation_loss(rendered, target, self.config.dino_weight)

