"""Dense DINO patch features per image, reduced by one PCA basis shared by the whole scene.

For "segment everything" the Gaussians carry DINO features next to the Click-Gaussian ones
and are clustered on a weighted sum of 3D distance and feature distance (`segmentation`). This
module makes the 2D targets: a self-supervised DINO ViT (default ViT-S/8, through timm 0.6.7)
turns each image into a grid of patch features (one per 8x8 pixels), and a PCA basis fit once
across a sample of the scene's images reduces them to `num_components` channels, so that a
channel means the same thing in every view (a per-image PCA would not). Outputs are float16
[h, w, k] at patch resolution; upsampling to pixels happens at training time.

timm 0.6.7's ViT only accepts its 224 px training size, so `dino_patch_features` runs the blocks
itself with the position embedding interpolated (bicubic) to the input's patch grid, as DINO's
own `interpolate_pos_encoding` does. Weights come from a local checkpoint or are downloaded once
into the weights folder (`weights.weights_dir()`); offline without one the error says what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from splatseg_ns.core.io.weights import WeightsError, read_state_dict, resolve_checkpoint

FLAG_PREFIX = "--[pipeline.datamanager.]dino-config."  # splatseg masks / ns-train
# DINO backbones timm 0.6.7 knows, by (width, patch size): to name the right one for a checkpoint.
_DINO_MODELS = {
    (384, 8): "vit_small_patch8_224_dino",
    (384, 16): "vit_small_patch16_224_dino",
    (768, 8): "vit_base_patch8_224_dino",
    (768, 16): "vit_base_patch16_224_dino",
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DinoConfig:
    """DINO patch features for scene decomposition (Caron et al. 2021, arXiv 2104.14294).

    - The ViT runs on the image resized to `resolution` px on its longer side; the final
      layer's normalised patch tokens are the features (the class token is dropped).
    - A PCA basis is fit on up to `pca_max_samples` patch features drawn from `pca_images`
      evenly spaced images and applied to every image.
    """

    model_name: str = "vit_small_patch8_224_dino"
    """timm model name. ViT-S/8: the smallest DINO ViT with the finest (8 px) patch grid."""
    checkpoint: Optional[Path] = None
    """Local checkpoint (e.g. dino_deitsmall8_pretrain.pth). None: the official file, downloaded
    once into $SPLATSEG_CACHE (default ~/.cache/splatseg/)."""
    resolution: int = 448
    """Longer image side fed to the ViT (rounded to the patch size): 56 patches of 8 px at the
    default, twice DINO's 224 px training size, for a usefully fine grid at ~2.4k tokens."""
    num_components: int = 64
    """PCA channels kept (of 384 for ViT-S). 64 is a channel count gsplat renders without padding,
    and 128 bytes per Gaussian in float16; the fitted basis records how much variance it keeps."""
    pca_images: int = 32
    """Images (evenly spaced through the scene) the PCA basis is fit on."""
    pca_max_samples: int = 100_000
    """Patch features drawn at random from those images for the fit."""
    seed: int = 0
    """Seed of that draw, so that every shard of an extraction fits the same basis."""

    def settings(self) -> Dict[str, Any]:
        """What determines the output, as recorded in the cache (checkpoint by file name)."""
        fields = {k: v for k, v in vars(self).items() if k != "checkpoint"}
        return {**fields, "checkpoint": Path(self.checkpoint).name if self.checkpoint else "timm-default",
                "features": "last-layer-norm-patch-tokens"}


def load_dino(config: DinoConfig, device: Union[str, "torch.device"] = "cpu", pretrained: bool = True):  # noqa: F821
    """The timm ViT of `config` in eval mode on `device`; `pretrained=False` keeps random weights (tests).

    Weights: `config.checkpoint`, else the model's official file in the weights folder,
    downloaded when absent. Raises `WeightsError` with the file, folder and flag to use.
    """
    import timm

    try:
        model = timm.create_model(config.model_name, pretrained=False, num_classes=0)
    except RuntimeError as err:
        known = sorted(_DINO_MODELS.values())
        raise WeightsError(f"unknown timm model {config.model_name!r}; DINO ones: {known}") from err
    if pretrained:
        cfg = getattr(model, "pretrained_cfg", None) or model.default_cfg
        url = cfg.get("url")
        if not url and config.checkpoint is None:
            raise WeightsError(f"timm has no weights URL for {config.model_name}; pass {FLAG_PREFIX}checkpoint PATH.")
        path = resolve_checkpoint(
            config.checkpoint, url, what=f"DINO {config.model_name}", flag=f"{FLAG_PREFIX}checkpoint"
        )
        state_dict = _dino_state_dict(path)
        from timm.models.vision_transformer import checkpoint_filter_fn

        proj = state_dict.get("patch_embed.proj.weight")
        found = _DINO_MODELS.get((proj.shape[0], proj.shape[-1])) if proj is not None and proj.ndim == 4 else None
        try:
            model.load_state_dict(checkpoint_filter_fn(state_dict, model), strict=True)
        except RuntimeError as err:
            hint = f"this looks like a {found} checkpoint; pass {FLAG_PREFIX}model-name {found}" if found else (
                "it is not a DINO ViT checkpoint timm knows")
            raise WeightsError(f"{path}: cannot load into {config.model_name}: {hint}. ({str(err)[:300]})") from err
    return model.to(device).eval()


def _dino_state_dict(path: Path) -> Dict[str, Any]:
    ckpt = read_state_dict(path, nested=("teacher", "model", "state_dict"))  # DINO's training checkpoints nest
    out = {}
    for k, v in ckpt.items():
        for prefix in ("module.", "backbone."):
            k = k[len(prefix):] if k.startswith(prefix) else k
        if not k.startswith("head."):
            out[k] = v
    return out


def input_size(hw: Tuple[int, int], resolution: int, patch: int) -> Tuple[int, int]:
    """(H, W) fed to the ViT: longer side `resolution`, aspect kept, both multiples of `patch`."""
    h, w = hw
    s = resolution / max(h, w)
    return max(patch, round(h * s / patch) * patch), max(patch, round(w * s / patch) * patch)


def _pos_embed(model, gh: int, gw: int):
    """The model's position embedding [1, 1 + gh * gw, C] for a gh x gw patch grid (bicubic)."""
    import torch
    import torch.nn.functional as F

    pos = model.pos_embed
    prefix = 0 if getattr(model, "no_embed_class", False) else getattr(model, "num_prefix_tokens", 1)
    cls_pos, grid = pos[:, :prefix], pos[:, prefix:]
    g = int(round(grid.shape[1] ** 0.5))
    if (g, g) == (gh, gw):
        return pos
    grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)], dim=1)


def dino_patch_features(model, image: np.ndarray, resolution: int) -> np.ndarray:
    """Final-layer patch features float32 [h, w, C] of an RGB uint8 image at `resolution` px."""
    import torch
    from PIL import Image

    patch = model.patch_embed.patch_size[0]
    h, w = input_size(image.shape[:2], resolution, patch)
    resized = np.asarray(Image.fromarray(image).resize((w, h), Image.BICUBIC), dtype=np.float32) / 255.0
    device = model.pos_embed.device
    x = torch.from_numpy((resized - IMAGENET_MEAN) / IMAGENET_STD).float().permute(2, 0, 1)[None].to(device)
    with torch.no_grad():
        x = model.patch_embed.proj(x)
        gh, gw = x.shape[-2:]
        x = model.patch_embed.norm(x.flatten(2).transpose(1, 2))
        pos = _pos_embed(model, gh, gw)
        cls = model.cls_token.expand(x.shape[0], -1, -1)
        if getattr(model, "no_embed_class", False):
            x = torch.cat([cls, x + pos], dim=1)
        else:
            x = torch.cat([cls, x], dim=1) + pos
        x = model.norm(model.blocks(model.pos_drop(x)))
    return x[0, 1:].reshape(gh, gw, -1).float().cpu().numpy()


def fit_pca(
    features: Sequence[np.ndarray],
    k: int,
    max_samples: int = 100_000,
    seed: int = 0,
    return_explained: bool = False,
):
    """A PCA basis for feature maps [..., C] taken together: (mean [C], basis [C, k]) float32.

    Up to `max_samples` vectors are drawn, evenly over the maps; the axes are `pca.principal_axes`
    (ordered by variance, deterministically signed). With `return_explained`, also the fraction of
    variance kept.
    """
    import torch

    from splatseg_ns.core.pca import principal_axes

    rng = np.random.default_rng(seed)
    per_map = max(1, max_samples // max(1, len(features)))
    rows = []
    for f in features:
        flat = np.asarray(f, dtype=np.float64).reshape(-1, np.shape(f)[-1])
        if len(flat) > per_map:
            flat = flat[np.sort(rng.choice(len(flat), per_map, replace=False))]
        rows.append(flat)
    mean, basis, explained = principal_axes(torch.from_numpy(np.concatenate(rows)), k)
    out = (mean.numpy().astype(np.float32), basis.numpy().astype(np.float32))
    return out + (explained,) if return_explained else out


def apply_pca(features: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """Project features [..., C] on the basis: float32 [..., k]."""
    return ((np.asarray(features, dtype=np.float32) - mean) @ basis).astype(np.float32)


class DinoFeatures:
    """DINO as a feature source: `fit(images)` once per scene, then `(image) -> float16 [h, w, k]`.

    The model is loaded on first use; pass `model` to use one already built (tests use
    `load_dino(config, pretrained=False)`).
    """

    def __init__(self, config: Optional[DinoConfig] = None, device: str = "cpu", model=None):
        self.config = config or DinoConfig()
        self.device = device
        self._model = model
        self.mean: Optional[np.ndarray] = None
        self.basis: Optional[np.ndarray] = None

    @property
    def settings(self) -> Dict[str, Any]:
        return self.config.settings()

    def model(self):
        if self._model is None:
            self._model = load_dino(self.config, self.device)
        return self._model

    def patch_features(self, image: np.ndarray) -> np.ndarray:
        """Unreduced features float32 [h, w, C]."""
        return dino_patch_features(self.model(), image, self.config.resolution)

    def pca_sample(self, image_paths: Sequence[Path]) -> List[Path]:
        """The images the basis is fit on: `pca_images` evenly spaced ones (all if fewer)."""
        n = len(image_paths)
        if n <= self.config.pca_images:
            return list(image_paths)
        picks = np.unique(np.linspace(0, n - 1, self.config.pca_images).round().astype(int))
        return [image_paths[i] for i in picks]

    def fit(self, images: Iterable[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, float]:
        """Fit and keep the scene's basis; returns (mean, basis, fraction of variance kept)."""
        feats = [self.patch_features(image) for image in images]
        if not feats:
            raise ValueError("fitting the DINO PCA basis needs at least one image")
        c = self.config
        self.mean, self.basis, explained = fit_pca(
            feats, c.num_components, c.pca_max_samples, c.seed, return_explained=True
        )
        return self.mean, self.basis, explained

    def set_pca(self, mean: np.ndarray, basis: np.ndarray) -> None:
        self.mean, self.basis = np.asarray(mean, np.float32), np.asarray(basis, np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.basis is None:
            raise RuntimeError("DinoFeatures: fit the scene's PCA basis first (fit(images) or set_pca)")
        return apply_pca(self.patch_features(image), self.mean, self.basis).astype(np.float16)
