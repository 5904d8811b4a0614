"""The per-image cache of extracted products (SAM masks, DINO features, CLIP embeddings).

Extraction is slow (SAM ViT-H: seconds per image on a GPU) and training reads its results
every step, so each product of each image is computed once and kept on disk, by default beside
the data in `DIR/splatseg_cache/`:

    splatseg_cache/
        dataset.json                      which dataset (image names + content hashes) this is for
        masks/<image rel. path>.npz       coarse, fine: uint16 [H, W] instance maps
        masks/<image rel. path>.json      the entry's manifest
        dino/_pca.npz, dino/_pca.json     the scene-wide PCA basis
        dino/<image rel. path>.npz        features: float16 [h, w, k]
        clip/<image rel. path>.npz        coarse_ids [M], coarse_emb [M, E], fine_ids, fine_emb

An entry's manifest records what produced it: the image (dataset-relative name and the sha1 of
its bytes), the extractor's name and settings (checkpoint identity and resolution included)
and their hash, the entries it was computed from, and the data file's size and sha1. An entry
is a hit only when all of that matches; a changed image or setting, a missing manifest (a crash
between data and manifest) or a damaged data file make it a miss, recomputed by `extract_all`.
Data is written before its manifest, each through a temporary file in the same folder and
`os.replace`, so an entry is either complete or absent and an interrupted run resumes where it
stopped. `dataset.json` catches a cache written for another dataset before it is overwritten.
Filling it is `extraction.extract_all`; the extractors are `extractors`. Model checkpoints
live apart from it, in `weights.weights_dir()`. Nothing here imports torch or nerfstudio.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from splatseg_ns.core.files import atomic_write, atomic_write_json, file_sha1, npz_bytes, read_json, settings_hash
from splatseg_ns.core.io.images import resize_nearest, same_aspect

CACHE_FOLDER = "splatseg_cache"
FORMAT_VERSION = 1
MASKS, DINO, CLIP = "masks", "dino", "clip"


class CacheError(RuntimeError):
    """A cache, or an input to fill it with, that cannot be used as it is; the message says what
    happened and what to do."""


class CacheMissError(CacheError):
    """An entry the training side needs is missing or out of date."""


class OtherDatasetError(CacheError):
    """The cache folder holds products of another dataset."""


MANIFEST_FIELDS = {"image": str, "image_sha1": str, "extractor": str, "settings": dict, "settings_hash": str,
                   "inputs": dict, "data_bytes": int, "data_sha1": str}
"""A manifest's fields and their JSON types (a manifest someone edited or a disk damaged is a miss)."""


def manifest_problem(manifest: dict) -> str:
    """The first field of a manifest that is missing or of the wrong type ("" when it is well-formed)."""
    for name, kind in MANIFEST_FIELDS.items():
        value = manifest.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            return f"field {name!r} is {type(value).__name__ if name in manifest else 'missing'}, not {kind.__name__}"
    return ""


def _read_dict(path: Path) -> Optional[dict]:
    """A JSON object from `path`; None when missing, damaged or not an object."""
    obj = read_json(path)
    return obj if isinstance(obj, dict) else None


@dataclass
class Lookup:
    """The state of one entry: `status` is "hit", "missing", "stale" or "corrupt"; `reason` says why."""

    status: str
    reason: str = ""
    manifest: Optional[dict] = None

    @property
    def hit(self) -> bool:
        return self.status == "hit"


class FeatureCache:
    """The cache folder of one dataset. Image paths are keyed by their path relative to `data_dir`."""

    def __init__(self, data_dir: Path, cache_dir: Optional[Path] = None):
        self._given_dir = Path(os.path.abspath(data_dir))
        self.data_dir = Path(data_dir).resolve()
        self.cache_dir = Path(cache_dir).resolve() if cache_dir is not None else self.data_dir / CACHE_FOLDER

    # -- names ---------------------------------------------------------------------------------

    def key(self, image_path: Path) -> str:
        """The image's dataset-relative name (posix), as it is named, not where a symbolic link points (two
        links of one name in two folders are two images); images outside the dataset go by file name."""
        path = Path(os.path.abspath(image_path))
        for root in (self._given_dir, self.data_dir):
            try:
                return path.relative_to(root).as_posix()
            except ValueError:
                pass
        try:  # named through a link to the dataset folder
            return Path(image_path).resolve().relative_to(self.data_dir).as_posix()
        except (ValueError, RuntimeError, OSError):  # outside the dataset, or a symlink loop
            return path.name

    def data_path(self, product: str, image_path: Path) -> Path:
        return self.cache_dir / product / (self.key(image_path) + ".npz")

    def manifest_path(self, product: str, image_path: Path) -> Path:
        return self.cache_dir / product / (self.key(image_path) + ".json")

    def _hint(self) -> str:
        where = "" if self.cache_dir == self.data_dir / CACHE_FOLDER else f" --cache-dir {self.cache_dir}"
        return f"Run `splatseg masks --data {self.data_dir}{where}` first."

    # -- entries -------------------------------------------------------------------------------

    def lookup(
        self,
        product: str,
        image_path: Path,
        settings: Optional[Dict[str, Any]] = None,
        inputs: Optional[Dict[str, str]] = None,
        verify_data: bool = True,
    ) -> Lookup:
        """Whether the entry is usable. `settings=None` accepts any settings; `inputs` maps each
        required product to the data sha1 it must have been computed from."""
        manifest = _read_dict(self.manifest_path(product, image_path))
        if manifest is None:
            partial = self.data_path(product, image_path).exists()
            return Lookup("missing", "data without a manifest (interrupted write)" if partial else "not computed")
        if manifest.get("format") != FORMAT_VERSION or manifest.get("product") != product:
            return Lookup("corrupt", "manifest of another format", manifest)
        damaged = manifest_problem(manifest)
        if damaged:
            return Lookup("corrupt", f"damaged manifest ({damaged})", manifest)
        key = self.key(image_path)
        if manifest.get("image") != key:
            return Lookup("corrupt", f"manifest is for {manifest.get('image')!r}, not {key!r}", manifest)
        if manifest.get("image_sha1") != file_sha1(image_path):
            return Lookup("stale", "the image changed since it was computed", manifest)
        if settings is not None and manifest.get("settings_hash") != settings_hash(settings):
            changed = _settings_diff(manifest.get("settings", {}), settings)
            return Lookup("stale", f"extractor settings changed: {changed}", manifest)
        for name, sha in (inputs or {}).items():
            if manifest.get("inputs", {}).get(name) != sha:
                return Lookup("stale", f"its {name} input was recomputed", manifest)
        data = self.data_path(product, image_path)
        try:
            size = data.stat().st_size
        except FileNotFoundError:
            return Lookup("corrupt", "data file missing", manifest)
        if size != manifest.get("data_bytes"):
            return Lookup("corrupt", f"data file has {size} bytes, {manifest.get('data_bytes')} were written", manifest)
        if verify_data and file_sha1(data) != manifest.get("data_sha1"):
            return Lookup("corrupt", "data file content differs from what was written", manifest)
        return Lookup("hit", "", manifest)

    def write(
        self,
        product: str,
        image_path: Path,
        arrays: Dict[str, np.ndarray],
        extractor_name: str,
        settings: Dict[str, Any],
        inputs: Optional[Dict[str, str]] = None,
        image_hw: Optional[Tuple[int, int]] = None,
    ) -> dict:
        """Store one entry: data first, then its manifest (each atomically)."""
        data = npz_bytes(arrays)
        data_path = self.data_path(product, image_path)
        for path in (data_path, self.manifest_path(product, image_path)):
            if path.is_dir():
                raise CacheError(f"{path} is a folder where a cache entry of {image_path} belongs; remove it "
                                 f"(rm -r '{path}') and rerun.")
        atomic_write(data_path, data)
        manifest = {
            "format": FORMAT_VERSION,
            "product": product,
            "image": self.key(image_path),
            "image_sha1": file_sha1(image_path),
            "image_hw": list(image_hw) if image_hw else None,
            "extractor": extractor_name,
            "settings": settings,
            "settings_hash": settings_hash(settings),
            "inputs": dict(inputs or {}),
            "data_file": data_path.name,
            "data_bytes": len(data),
            "data_sha1": hashlib.sha1(data).hexdigest(),
            "shapes": {k: list(np.shape(v)) for k, v in arrays.items()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        atomic_write_json(self.manifest_path(product, image_path), manifest)
        return manifest

    def read(self, product: str, image_path: Path, settings: Optional[Dict[str, Any]] = None) -> Dict[str, np.ndarray]:
        """The arrays of a valid entry; `CacheMissError` (saying why and what to run) otherwise."""
        found = self.lookup(product, image_path, settings)
        if not found.hit:
            raise CacheMissError(f"{self.data_path(product, image_path)}: no usable {product} for image "
                                 f"{image_path} ({self._explain(found)}). {self._hint()}")
        return self.load_arrays(product, image_path)

    def load_arrays(self, product: str, image_path: Path) -> Dict[str, np.ndarray]:
        path = self.data_path(product, image_path)
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except Exception as err:
            raise CacheMissError(
                f"{path}: cannot read cached {product} ({err}). Delete it and rerun. {self._hint()}"
            ) from err

    def _explain(self, found: Lookup) -> str:
        if found.status == "stale" and "image changed" in found.reason:
            recorded = _read_dict(self.cache_dir / "dataset.json")
            if recorded and Path(recorded.get("data_dir", "")) != self.data_dir:
                return (f"{found.reason}: this cache was written for the dataset at {recorded.get('data_dir')}, "
                        "an image of the same name there had other content")
        return f"{found.status}: {found.reason}"

    # -- inputs of dependent products ------------------------------------------------------------

    def input_hashes(self, product: str, requires: Sequence[str], image_path: Path) -> Dict[str, str]:
        """The data sha1 of each product that `product` is computed from (they must be valid entries)."""
        hashes = {}
        for name in requires:
            found = self.lookup(name, image_path)
            if not found.hit:
                raise CacheMissError(f"{product} of {image_path} needs its {name}, which is "
                                     f"{found.status} ({found.reason}). Compute {name} first.")
            hashes[name] = found.manifest["data_sha1"]
        return hashes

    # -- what the training side reads ----------------------------------------------------------

    def load_masks(self, image_path: Path, image_hw: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(coarse, fine) int32 instance maps, resized nearest to `image_hw` when given."""
        arrays = self.read(MASKS, image_path)
        coarse, fine = arrays["coarse"].astype(np.int32), arrays["fine"].astype(np.int32)
        if image_hw is not None and coarse.shape != tuple(image_hw):
            from splatseg_ns.core.extract.masks import MaskError

            h, w = image_hw
            mh, mw = coarse.shape
            if not same_aspect((mh, mw), (h, w)):
                raise MaskError(f"{self.data_path(MASKS, image_path)}: cached masks are {mw}x{mh} but the image is "
                                f"{w}x{h}. Recompute them: splatseg masks --data {self.data_dir}")
            coarse, fine = resize_nearest(coarse, (h, w)), resize_nearest(fine, (h, w))
        return coarse, fine

    def load_dino(self, image_path: Path) -> np.ndarray:
        """float16 [h, w, k] PCA-reduced DINO features at patch resolution.

        Checks that the entry was made with the scene's current PCA basis."""
        arrays = self.read(DINO, image_path)
        found = self.lookup(DINO, image_path, verify_data=False)
        pca = _read_dict(self.cache_dir / DINO / "_pca.json")
        used = (found.manifest or {}).get("settings", {}).get("pca_sha1")
        if pca is not None and used is not None and used != pca.get("data_sha1"):
            raise CacheMissError(
                f"{self.data_path(DINO, image_path)}: DINO features were reduced with another PCA basis than "
                f"{self.cache_dir / DINO / '_pca.npz'} (the basis was refit). {self._hint()}"
            )
        return arrays["features"]

    def load_clip(self, image_path: Path) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """{"coarse": (ids [M] int32, emb [M, E] float32), "fine": (...)}; rows L2-normalised."""
        arrays = self.read(CLIP, image_path)
        return {
            level: (arrays[f"{level}_ids"].astype(np.int32), arrays[f"{level}_emb"].astype(np.float32))
            for level in ("coarse", "fine")
        }

    # -- which dataset ---------------------------------------------------------------------------

    def remove_stale_temporaries(self, older_than_s: float = 600.0) -> int:
        """Delete the temporary files of writes that a killed process left (SIGKILL skips the cleanup); a live
        write's is seconds old. Returns how many were removed."""
        removed, now = 0, time.time()
        for tmp in self.cache_dir.rglob(".*.tmp") if self.cache_dir.is_dir() else ():
            try:
                if tmp.is_file() and now - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()
                    removed += 1
            except OSError:  # another process removed it first
                pass
        return removed

    def check_dataset(self, image_paths: Sequence[Path], overwrite: bool = False) -> Dict[str, str]:
        """Refuse a cache written for another dataset; then record this one in `dataset.json`.

        Another dataset = `dataset.json` lists images none of which is here with the same name and
        content. Some changed or new images are the same dataset edited (their entries go stale).
        Returns {name: sha1} of `image_paths`.
        """
        current = {self.key(p): file_sha1(p) for p in image_paths}
        record_path = self.cache_dir / "dataset.json"
        recorded = _read_dict(record_path)
        if recorded is not None and not (isinstance(recorded.get("images"), dict) and isinstance(
                recorded.get("data_dir", ""), str) and all(isinstance(v, str) for v in recorded["images"].values())):
            recorded = None  # damaged (edited by hand?): which dataset it was is unknown, the entries still say
        if recorded and recorded.get("images") and not overwrite:
            old = recorded["images"]
            if not any(old.get(name) == sha for name, sha in current.items()):
                shared = sum(name in old for name in current)
                examples = ", ".join(sorted(old)[:3])
                raise OtherDatasetError(
                    f"{self.cache_dir} holds a cache written for another dataset ({recorded.get('data_dir')}: "
                    f"{len(old)} images, e.g. {examples}); none of the {len(current)} images of {self.data_dir} is in "
                    f"it with the same content ({shared} share a name but differ); it was left untouched. Point this "
                    "dataset's cache elsewhere (`splatseg masks --cache-dir DIR`, `ns-train ... "
                    f"--pipeline.datamanager.cache-dir DIR`), or delete {self.cache_dir} to start it afresh."
                )
        if recorded is None or recorded.get("images") != current or Path(recorded.get("data_dir", "")) != self.data_dir:
            record = {"format": FORMAT_VERSION, "data_dir": str(self.data_dir), "images": current}
            atomic_write_json(record_path, record)
        return current


@dataclass(frozen=True)
class CachedMasks:
    """Masks computed by `splatseg masks` (SAM), read like `masks.FolderMasks`."""

    cache: FeatureCache

    def check(self) -> None:
        if not (self.cache.cache_dir / MASKS).is_dir():
            raise CacheMissError(f"{self.cache.cache_dir / MASKS}: no cached masks. {self.cache._hint()}")

    def load(self, image_path: Path, image_hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
        return self.cache.load_masks(image_path, image_hw)


def _settings_diff(old: Dict[str, Any], new: Dict[str, Any]) -> str:
    old = json.loads(json.dumps(old, default=str))
    new = json.loads(json.dumps(new, default=str))
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "") if changed else "(same values, other hash)"
