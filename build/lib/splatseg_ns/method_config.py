"""The `splatseg` method as nerfstudio registers it (`ns-train splatseg --data DIR`).

Import-light on purpose: nerfstudio loads this module for every `ns-*` command, and a plugin
that fails at import breaks them all. Heavy libraries (SAM, CLIP, hdbscan) load inside functions.
"""

from __future__ import annotations

import torch
from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from splatseg_ns.datamanager import SplatsegDataManagerConfig
from splatseg_ns.model import SplatsegModelConfig

COLOUR_STEPS = 30000
"""Splatfacto's schedule for colour and geometry."""
FEATURE_STEPS = 3000
"""Click-Gaussian trains the features for 3000 steps on top of a trained scene."""


def _adam(lr: float) -> AdamOptimizerConfig:
    return AdamOptimizerConfig(lr=lr, eps=1e-15)


def splatseg_trainer_config() -> TrainerConfig:
    """Splatfacto's defaults for colour, then Click-Gaussian's 3000 feature steps (Adam, lr 0.01)."""
    return TrainerConfig(
        method_name="splatseg",
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=COLOUR_STEPS + FEATURE_STEPS,
        mixed_precision=False,
        # Runs on a machine without a GPU too (the pure-torch rasteriser), so pick the device present.
        machine=MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu"),
        pipeline=VanillaPipelineConfig(
            datamanager=SplatsegDataManagerConfig(
                dataparser=NerfstudioDataParserConfig(load_3D_points=True),
                cache_images_type="uint8",
            ),
            model=SplatsegModelConfig(feature_stage_start=COLOUR_STEPS),
        ),
        optimizers={
            "means": {
                "optimizer": _adam(1.6e-4),
                "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=COLOUR_STEPS),
            },
            "features_dc": {"optimizer": _adam(0.0025), "scheduler": None},
            "features_rest": {"optimizer": _adam(0.0025 / 20), "scheduler": None},
            "opacities": {"optimizer": _adam(0.05), "scheduler": None},
            "scales": {"optimizer": _adam(0.005), "scheduler": None},
            "quats": {"optimizer": _adam(0.001), "scheduler": None},
            "seg_features": {"optimizer": _adam(0.01), "scheduler": None},
            "dino_features": {"optimizer": _adam(0.01), "scheduler": None},
            "camera_opt": {
                "optimizer": _adam(1e-4),
                "scheduler": ExponentialDecaySchedulerConfig(
                    lr_final=5e-7, max_steps=COLOUR_STEPS, warmup_steps=1000, lr_pre_warmup=0
                ),
            },
            "bilateral_grid": {
                "optimizer": _adam(2e-3),
                "scheduler": ExponentialDecaySchedulerConfig(
                    lr_final=1e-4, max_steps=COLOUR_STEPS, warmup_steps=1000, lr_pre_warmup=0
                ),
            },
        },
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


splatseg_method = MethodSpecification(
    config=splatseg_trainer_config(),
    description="Click-to-segment Gaussian splatting: splatfacto + two-level Click-Gaussian features.",
)
