"""3. The mask cache, bytes per image on disk and in the datamanager's RAM."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from scale.bytes_count import tensor_bytes
from scale.synthetic import sam_like_masks, synthetic_image


def cache_bytes(sizes: Sequence[Tuple[int, int]], images_per_size: int, num_coarse: int, num_fine: int,
                with_models: bool = True) -> List[Dict]:
    """Write real cache entries for synthetic images; bytes on disk and in the datamanager's RAM per image."""
    from PIL import Image

    from splatseg_ns.core.extract import cache as cache_module
    from splatseg_ns.core.extract import extractors as extractors_module
    from splatseg_ns.core.extract.clip_embeddings import ClipConfig
    from splatseg_ns.core.extract.dino_features import DinoConfig, load_dino
    from splatseg_ns.core.extract.extraction import extract_all
    from splatseg_ns.testing.tiny_models import TINY_CLIP_CONFIG

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "scene"
        (data_dir / "images").mkdir(parents=True)
        maps: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
        paths: List[Path] = []
        seed = 0
        for w, h in sizes:
            for k in range(images_per_size):
                seed += 1
                coarse, fine = sam_like_masks(h, w, num_coarse, num_fine, seed)
                path = data_dir / "images" / f"{w}x{h}_{k}.png"
                Image.fromarray(synthetic_image(fine, seed)).save(path, compress_level=1)
                maps[path.name] = (coarse, fine)
                paths.append(path)

        def compute_masks(image, image_path):  # what sam_extractor's compute returns, from the synthetic maps
            coarse, fine = maps[Path(image_path).name]
            dtype = np.uint16 if max(coarse.max(), fine.max()) < 65536 else np.int32
            return {"coarse": coarse.astype(dtype), "fine": fine.astype(dtype)}

        extractors = [extractors_module.Extractor(cache_module.MASKS, "sam", {"synthetic": "warped-voronoi"},
                                             compute_masks, needs_path=True)]
        if with_models:
            import open_clip.model

            dino_model = load_dino(DinoConfig(), pretrained=False)
            clip_model = open_clip.model.CLIP(**{**TINY_CLIP_CONFIG, "embed_dim": 512}).eval()  # ViT-B-16's width
            extractors.append(extractors_module.dino_extractor(DinoConfig(), "cpu", model=dino_model))
            extractors.append(extractors_module.clip_extractor(ClipConfig(), "cpu", model=clip_model))
        cache_dir = data_dir / cache_module.CACHE_FOLDER
        t0 = time.perf_counter()
        extract_all(paths, extractors, cache_dir, progress=False, data_dir=data_dir)
        extract_s = time.perf_counter() - t0
        cache = cache_module.FeatureCache(data_dir, cache_dir)
        products = [e.product for e in extractors]
        for path in paths:
            w, h = (int(v) for v in path.name.split("_")[0].split("x"))
            coarse, fine = maps[path.name]
            row = {"size": (w, h), "image": path.name, "segments": (int(coarse.max()), int(fine.max()))}
            for product in products:
                arrays = cache.load_arrays(product, path)
                t0 = time.perf_counter()
                cache.read(product, path)
                row[f"{product}_read_s"] = time.perf_counter() - t0
                row[f"{product}_disk"] = cache.data_path(product, path).stat().st_size
                row[f"{product}_manifest"] = cache.manifest_path(product, path).stat().st_size
                row[f"{product}_raw"] = sum(a.nbytes for a in arrays.values())
                row[f"{product}_shapes"] = {k: (a.dtype.name, list(a.shape)) for k, a in arrays.items()}
            row["ram"] = datamanager_ram(cache, path, (h, w), products)
            rows.append(row)
        pca = cache_dir / cache_module.DINO / "_pca.npz"
        for row in rows:
            row["pca_bytes"] = pca.stat().st_size if pca.exists() else 0
            row["extract_s_all"] = extract_s
    return rows


def datamanager_ram(cache, path: Path, image_hw: Tuple[int, int], products: Sequence[str]) -> Dict[str, int]:
    """Bytes `SplatsegDataManager._attach_masks` keeps per image, through the loaders and conversions it uses."""
    from splatseg_ns.core.io.images import load_image

    ram = {"image uint8": tensor_bytes([torch.from_numpy(load_image(path))])}  # cache_images_type="uint8"
    coarse, fine = cache.load_masks(path, image_hw)  # CachedMasks.load -> int32; the datamanager keeps int16 if it can
    kept = np.int16 if max(coarse.max(), fine.max()) <= np.iinfo(np.int16).max else np.int32
    ram["coarse_mask+fine_mask"] = tensor_bytes([torch.from_numpy(m.astype(kept)) for m in (coarse, fine)])
    ram["_masks as int32"] = tensor_bytes([torch.from_numpy(coarse), torch.from_numpy(fine)])
    ram["_masks as int16"] = tensor_bytes([torch.from_numpy(m.astype(np.int16)) for m in (coarse, fine)])
    if "clip" in products:
        clip = cache.load_clip(path)
        ram["clip ids (long) + emb (float32)"] = tensor_bytes(
            [torch.from_numpy(ids).long() for ids, _ in clip.values()] + [torch.from_numpy(e) for _, e in clip.values()]
        )
        ram["_clip as int32 + float16"] = sum(ids.nbytes + e.astype(np.float16).nbytes for ids, e in clip.values())
    if "dino" in products:
        dino = torch.from_numpy(cache.load_dino(path).astype("float32"))
        ram["dino (float32)"] = tensor_bytes([dino])
        ram["_dino as float16"] = dino.numel() * 2
    return ram


def real_datamanager_check(resolution: int = 64) -> Dict[str, str]:
    """dtype and bytes per pixel of each tensor in the real datamanager's cached training batch (demo scene)."""
    from splatseg_ns.method_config import splatseg_trainer_config
    from splatseg_ns.scenes.demo_scene import write_demo_scene

    with tempfile.TemporaryDirectory() as tmp:
        data = write_demo_scene(Path(tmp) / "scene", num_views=4, resolution=resolution)
        config = splatseg_trainer_config()
        config.pipeline.datamanager.data = data
        datamanager = config.pipeline.datamanager.setup(device="cpu", test_mode="val")
        cached = datamanager.cached_train[0]
        h, w = cached["image"].shape[:2]
        return {k: f"{v.dtype} {list(v.shape)}: {tensor_bytes([v]) / (h * w):.1f} B/px"
                for k, v in cached.items() if isinstance(v, torch.Tensor)}
