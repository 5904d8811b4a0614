"""The extractors that fill the cache: SAM masks, the user's mask folder, DINO features, CLIP embeddings.

Each is an `Extractor`: what product it makes, the settings that determine its output (recorded
in every entry's manifest, so a change recomputes), and a `compute` callable on one image. The
models load on first use, so a fully cached run never loads them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from splatseg_ns.core.extract.cache import CLIP, DINO, MASKS
from splatseg_ns.core.files import atomic_write, atomic_write_json, file_sha1, npz_bytes, read_json, settings_hash
from splatseg_ns.core.io.images import load_image

if TYPE_CHECKING:
    from splatseg_ns.core.extract.cache import FeatureCache


@dataclass
class Extractor:
    """One product's extractor, as the cache sees it.

    Args:
        product: what it makes and where it is stored ("masks", "dino", "clip").
        name: which extractor made it (e.g. "sam"); recorded in the manifest.
        settings: everything that changes its output (model, checkpoint identity, resolution,
            thresholds); an entry made with other settings is stale.
        compute: `compute(image uint8 [H, W, 3], **inputs) -> {array name: array}`; `inputs` holds
            the arrays of the products in `requires` for the same image.
        requires: products this one is computed from (CLIP embeds the cached masks).
        prepare: optional `prepare(cache, all image paths) -> extra settings`, run once before
            extraction (the DINO PCA basis is fit there); the extra settings join `settings`.
        needs_path: `compute` also gets `image_path=` (masks the user brings are found by name).
    """

    product: str
    name: str
    settings: Dict[str, Any]
    compute: Callable[..., Dict[str, np.ndarray]]
    requires: Tuple[str, ...] = ()
    prepare: Optional[Callable[["FeatureCache", List[Path]], Dict[str, Any]]] = None
    needs_path: bool = False

    def __call__(self, image: np.ndarray, image_path: Optional[Path] = None, **inputs: Dict[str, np.ndarray]
                 ) -> Dict[str, np.ndarray]:
        if self.needs_path:
            return self.compute(image, image_path=image_path, **inputs)
        return self.compute(image, **inputs)


def sam_extractor(sam_config=None, device: str = "cpu", model=None) -> Extractor:
    """SAM automatic masks -> coarse/fine uint16 maps (model loaded on first miss)."""
    from splatseg_ns.core.extract.sam_masks import SamMaskConfig, SamMasks

    sam = SamMasks(sam_config or SamMaskConfig(), device=device, model=model)

    def compute(image: np.ndarray) -> Dict[str, np.ndarray]:
        coarse, fine = sam(image)
        dtype = np.uint16 if max(coarse.max(), fine.max()) < 65536 else np.int32
        return {"coarse": coarse.astype(dtype), "fine": fine.astype(dtype)}

    return Extractor(MASKS, "sam", sam.settings, compute)


def folder_extractor(mask_dir: Path) -> Extractor:
    """The user's own masks (`mask_dir/coarse|fine/<stem>.png`) as the masks product, so CLIP can embed them."""
    from splatseg_ns.core.extract.masks import FolderMasks

    folder = FolderMasks(Path(mask_dir))

    def compute(image: np.ndarray, image_path: Path) -> Dict[str, np.ndarray]:
        coarse, fine = folder.load(image_path, image.shape[:2])
        return {"coarse": coarse.astype(np.uint16), "fine": fine.astype(np.uint16)}

    def check_folder(cache: FeatureCache, images: List[Path]) -> Dict[str, Any]:
        folder.check()  # an empty folder is one error up front, not one "missing mask" per image
        return {}

    return Extractor(MASKS, "folder", {"mask_dir": str(Path(mask_dir).resolve())}, compute, prepare=check_folder,
                     needs_path=True)


def dino_extractor(dino_config=None, device: str = "cpu", model=None) -> Extractor:
    """DINO patch features reduced by a PCA basis fit once over a sample of the scene's images.

    The basis is stored in `dino/_pca.npz` and reused while its settings and sample images are
    unchanged; each entry records the basis it was reduced with. Shards started together each
    fit the same basis (same sample, same seed); on different hardware the last one written
    wins and entries reduced with the other go stale (a rerun fixes them): run one shard first
    to avoid that.
    """
    from splatseg_ns.core.extract.dino_features import DinoConfig, DinoFeatures

    dino = DinoFeatures(dino_config or DinoConfig(), device=device, model=model)
    settings = dino.settings

    def prepare(cache: FeatureCache, images: List[Path]) -> Dict[str, Any]:
        sample = dino.pca_sample(images)
        pca_path, record_path = cache.cache_dir / DINO / "_pca.npz", cache.cache_dir / DINO / "_pca.json"
        wanted = {"settings_hash": settings_hash(settings), "sample": {cache.key(p): file_sha1(p) for p in sample}}
        record = read_json(record_path)
        if (
            isinstance(record, dict)
            and all(record.get(k) == v for k, v in wanted.items())
            and pca_path.is_file()
            and file_sha1(pca_path) == record.get("data_sha1")
        ):
            with np.load(pca_path) as npz:
                dino.set_pca(npz["mean"], npz["basis"])
            return {"pca_sha1": record["data_sha1"]}
        mean, basis, explained = dino.fit(load_image(p) for p in sample)
        data = npz_bytes({"mean": mean, "basis": basis})
        atomic_write(pca_path, data)
        sha = hashlib.sha1(data).hexdigest()
        atomic_write_json(record_path, {**wanted, "data_sha1": sha, "explained_variance": explained})
        return {"pca_sha1": sha}

    return Extractor(DINO, "dino", settings, lambda image: {"features": dino(image)}, prepare=prepare)


def clip_extractor(clip_config=None, device: str = "cpu", model=None, tokenizer=None) -> Extractor:
    """CLIP embeddings of each coarse and fine mask of the cached masks."""
    from splatseg_ns.core.extract.clip_embeddings import ClipConfig, ClipMaskEmbeddings

    clip = ClipMaskEmbeddings(clip_config or ClipConfig(), device=device, model=model, tokenizer=tokenizer)

    def compute(image: np.ndarray, masks: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out = {}
        for level in ("coarse", "fine"):
            ids, emb = clip(image, masks[level])
            out[f"{level}_ids"], out[f"{level}_emb"] = ids.astype(np.int32), emb.astype(np.float16)
        return out

    return Extractor(CLIP, "clip", clip.settings, compute, requires=(MASKS,))
