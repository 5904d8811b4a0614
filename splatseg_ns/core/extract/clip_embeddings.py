"""One CLIP image embedding per 2D mask, and CLIP text embeddings, for text queries.

To select an object by name ("the shoe"), each segment of each training view gets a CLIP
embedding of its masked crop: the mask's bounding box cut out of the image with the pixels
outside the mask filled with CLIP's mean colour (which normalisation turns into zeros: no
signal), padded to a square with the same colour and resized to the model's input. A text
query is then compared (cosine) with these embeddings, and the matching masks' segments lead
to Gaussians through the Click-Gaussian features. Crops are embedded in batches.

Relies on open_clip_torch 2.x (the last line that fits nerfstudio's timm pin). Weights come
from a local checkpoint or are downloaded once into the weights folder (`weights.weights_dir()`);
offline without one the error names the file, where to put it and the flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from splatseg_ns.core.io.images import resize_nearest
from splatseg_ns.core.io.weights import WeightsError, resolve_checkpoint

FLAG_PREFIX = "--[pipeline.datamanager.]clip-config."  # splatseg masks / ns-train
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

@dataclass
class ClipConfig:
    """CLIP (open_clip) embeddings of masked crops, one per mask and level.

    The default, ViT-B/16 trained on LAION-2B, is what LERF's `OpenCLIPNetworkConfig`
    (lerf/encoders/openclip_encoder.py) and LangSplat, which copies it, use for open-vocabulary
    queries: 512-d embeddings at 224 px.
    """

    model_name: str = "ViT-B-16"
    """open_clip architecture name (open_clip.list_models())."""
    pretrained: str = "laion2b_s34b_b88k"
    """open_clip pretrained tag for `model_name` (open_clip.list_pretrained())."""
    checkpoint: Optional[Path] = None
    """Local weights file for `model_name` (.bin/.pt/.safetensors). None: the file of `pretrained`,
    downloaded once into $SPLATSEG_CACHE/open_clip (default ~/.cache/splatseg/open_clip)."""
    batch_size: int = 64
    """Crops embedded per forward pass; only memory/speed."""

    def settings(self) -> Dict[str, Any]:
        weights = Path(self.checkpoint).name if self.checkpoint else self.pretrained
        return {"model_name": self.model_name, "weights": weights, "crop": "bbox-masked-mean-fill-square"}


def _download_source(model_name: str, tag: str) -> Tuple[str, str, Dict[str, Any]]:
    """(url, local file name, open_clip's pretrained config) of an open_clip pretrained tag."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(model_name, tag)
    if not cfg:
        raise WeightsError(f"open_clip has no pretrained tag {tag!r} for {model_name}; known tags: "
                           f"{list_pretrained_tags_by_model(model_name)}. Or pass {FLAG_PREFIX}checkpoint PATH.")
    if cfg.get("hf_hub"):
        parts = cfg["hf_hub"].strip("/").split("/")
        repo, filename = "/".join(parts[:2]), "/".join(parts[2:]) or "open_clip_pytorch_model.bin"
        url = f"https://huggingface.co/{repo}/resolve/main/{filename}"
    else:
        url, filename = cfg["url"], Path(cfg["url"]).name
    return url, f"{model_name}_{tag}{Path(filename).suffix}", cfg


def load_clip(config: ClipConfig, device: Union[str, "torch.device"] = "cpu"):  # noqa: F821
    """(model, tokenizer) of `config`: the open_clip model in eval mode on `device`, its tokenizer.

    Raises `WeightsError` when the weights cannot be had (naming the file, the folder and the
    flag) or do not fit `model_name`.
    """
    import open_clip

    if open_clip.get_model_config(config.model_name) is None:
        raise WeightsError(f"unknown open_clip model {config.model_name!r}; see open_clip.list_models().")
    pretrained_cfg: Dict[str, Any] = {}
    if config.checkpoint is not None:
        path = resolve_checkpoint(
            config.checkpoint, "", what=f"CLIP {config.model_name}", flag=f"{FLAG_PREFIX}checkpoint"
        )
    else:
        url, filename, pretrained_cfg = _download_source(config.model_name, config.pretrained)
        path = resolve_checkpoint(None, url, what=f"CLIP {config.model_name}/{config.pretrained}",
                                  flag=f"{FLAG_PREFIX}checkpoint", filename=Path("open_clip") / filename)
    # Loaded from a path, open_clip does not apply the tag's activation and preprocessing: pass them.
    preprocess = {k: pretrained_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in pretrained_cfg}
    try:
        model = open_clip.create_model(
            config.model_name,
            pretrained=str(path),
            device=device,
            force_quick_gelu=bool(pretrained_cfg.get("quick_gelu", False)),
            force_preprocess_cfg=preprocess,
        )
    except Exception as err:  # size mismatch, missing keys, unreadable file
        raise WeightsError(f"{path}: cannot load into open_clip {config.model_name} ({type(err).__name__}: "
                           f"{str(err)[:300]}). Pass the weights of that model, or {FLAG_PREFIX}model-name of the "
                           "architecture the file is for.") from err
    return model.eval(), open_clip.get_tokenizer(config.model_name)


def _preprocess(model) -> Tuple[int, np.ndarray, np.ndarray]:
    """(input side, mean, std) of the model's image tower."""
    cfg = getattr(model.visual, "preprocess_cfg", None) or {}
    size = cfg.get("size") or model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    mean = np.asarray(cfg.get("mean") or OPENAI_MEAN, np.float32)
    std = np.asarray(cfg.get("std") or OPENAI_STD, np.float32)
    return int(size), mean, std


def mask_crops(
    image: np.ndarray, instance_map: np.ndarray, size: int, fill: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """(ids [M] int32, crops uint8 [M, size, size, 3]): each mask's masked, square-padded box crop.

    Pixels outside the mask and the padding take colour `fill` (uint8 RGB); the crop is centred
    in its square. Ids are the nonzero values of `instance_map`, ascending.
    """
    from PIL import Image
    from scipy.ndimage import find_objects

    if instance_map.shape != image.shape[:2]:
        raise ValueError(f"instance map {instance_map.shape} and image {image.shape[:2]} differ in size")
    ids = np.unique(instance_map)
    ids = ids[ids > 0].astype(np.int32)
    boxes = find_objects(instance_map.astype(np.int64))
    fill = np.asarray(fill, np.uint8)
    crops = np.empty((len(ids), size, size, 3), np.uint8)
    for n, i in enumerate(ids):
        box = boxes[i - 1]
        inside = instance_map[box] == i
        h, w = inside.shape
        side = max(h, w)
        square = np.empty((side, side, 3), np.uint8)
        square[:] = fill
        top, left = (side - h) // 2, (side - w) // 2
        square[top : top + h, left : left + w] = np.where(inside[..., None], image[box], fill)
        crops[n] = np.asarray(Image.fromarray(square).resize((size, size), Image.BICUBIC))
    return ids, crops


def encode_masks(
    model, image: np.ndarray, instance_map: np.ndarray, batch_size: int = 64
) -> Tuple[np.ndarray, np.ndarray]:
    """(ids [M] int32, embeddings [M, E] float32, rows L2-normalised) of every mask of a level."""
    import torch

    size, mean, std = _preprocess(model)
    if instance_map.shape != image.shape[:2]:
        instance_map = resize_nearest(instance_map, image.shape[:2])
    ids, crops = mask_crops(image, instance_map, size, np.round(mean * 255))
    device = next(model.parameters()).device
    out = []
    with torch.no_grad(), torch.autocast(device.type, enabled=device.type == "cuda"):
        for start in range(0, len(crops), batch_size):
            batch = torch.from_numpy((crops[start : start + batch_size] / np.float32(255) - mean) / std)
            emb = model.encode_image(batch.permute(0, 3, 1, 2).float().to(device))
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
    dim = model.text_projection.shape[-1] if getattr(model, "text_projection", None) is not None else 0
    emb = torch.cat(out).numpy() if out else np.zeros((0, dim), np.float32)
    return ids, emb.astype(np.float32)


def encode_text(model, tokenizer, texts: Sequence[str]) -> np.ndarray:
    """L2-normalised text embeddings float32 [T, E]."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        emb = model.encode_text(tokenizer(list(texts)).to(device))
    return torch.nn.functional.normalize(emb.float(), dim=-1).cpu().numpy()


class ClipMaskEmbeddings:
    """CLIP as a per-mask embedder: `(image, instance_map) -> (ids [M], emb [M, E])`.

    The model is loaded on first use; pass `model`/`tokenizer` to use ones already built
    (e.g. `testing.tiny_models.build_tiny_clip()` in tests).
    """

    def __init__(self, config: Optional[ClipConfig] = None, device: str = "cpu", model=None, tokenizer=None):
        self.config = config or ClipConfig()
        self.device = device
        self._model, self._tokenizer = model, tokenizer

    @property
    def settings(self) -> Dict[str, Any]:
        return self.config.settings()

    def model(self):
        if self._model is None:
            self._model, self._tokenizer = load_clip(self.config, self.device)
        return self._model

    def __call__(self, image: np.ndarray, instance_map: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        return encode_masks(self.model(), image, instance_map, self.config.batch_size)

    def levels(
        self, image: np.ndarray, coarse: np.ndarray, fine: np.ndarray
    ) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """Both levels: {"coarse": (ids, emb), "fine": (ids, emb)}."""
        return {"coarse": self(image, coarse), "fine": self(image, fine)}

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        model = self.model()
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.config.model_name)
        return encode_text(model, self._tokenizer, texts)


def clip_text_encoder(config: ClipConfig, device: str = "cpu"):
    """texts -> L2-normalised text embeddings [T, E] (a torch tensor), with the CLIP model of `config`
    (the one that embedded a run's masks), loaded on first use."""
    import torch

    clip = ClipMaskEmbeddings(config, device=device)
    return lambda texts: torch.as_tensor(clip.encode_text(list(texts)))
