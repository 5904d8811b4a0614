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
An image that cannot be read, or whose mask is missing or bad, is skipped and reported once all
the others are stored (`InputFilesError`, naming each file and the fix).

Model checkpoints live apart from it, in `weights_dir()` ($SPLATSEG_CACHE or ~/.cache/splatseg).
Nothing here imports torch or nerfstudio; the extractors come in as callables (`Extractor`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

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


class ImageReadError(CacheError):
    """An image file that cannot be decoded (corrupt, truncated, not an image)."""


class InputFilesError(CacheError):
    """Some images (or their masks) could not be processed; `errors` holds one error per file.

    Raised after every other image of the run was processed and stored, so that one bad file
    costs one rerun of what is missing, not the whole extraction.
    """

    def __init__(self, message: str, errors: Sequence[Exception]):
        super().__init__(message)
        self.errors = list(errors)


class WeightsError(RuntimeError):
    """A model checkpoint that is missing, unreadable or for another model."""


# ----------------------------------------------------------------------------------------------
# Model weights
# ----------------------------------------------------------------------------------------------


def weights_dir() -> Path:
    """Where downloaded checkpoints are kept: $SPLATSEG_CACHE, else ~/.cache/splatseg."""
    return Path(os.environ.get("SPLATSEG_CACHE") or Path.home() / ".cache" / "splatseg").expanduser()


def _download(url: str, destination: Path) -> None:
    """Fetch `url` into `destination` (torch.hub writes a temporary file and renames it)."""
    import torch.hub

    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(destination), progress=True)


def resolve_checkpoint(
    explicit: Optional[Path], url: str, what: str, flag: str, filename: Optional[Path] = None
) -> Path:
    """A local checkpoint file: `explicit`, or `weights_dir() / filename` (default: the name in
    `url`), downloaded from `url` when absent.

    Raises `WeightsError` naming the file, the folder to put it in and the flag to pass.
    """
    if explicit is not None:
        explicit = Path(explicit).expanduser()
        if not explicit.is_file():
            default = f"leave {flag} unset to download {url}" if url else f"pass {flag} an existing file"
            raise WeightsError(
                f"{explicit}: {what} checkpoint not found (given by {flag}). Fix the path, or {default}."
            )
        return explicit
    target = weights_dir() / (filename or Path(url).name)
    if target.is_file():
        return target
    try:
        _download(url, target)
    except Exception as err:  # offline, proxy, disk full...
        raise WeightsError(
            f"No {what} checkpoint: {target} does not exist and downloading {url} failed "
            f"({type(err).__name__}: {str(err)[:200]}). Download that file on a machine with internet and put it "
            f"at {target} (or set $SPLATSEG_CACHE to the folder that holds it), or pass {flag} /path/to/{target.name}."
        ) from err
    if not target.is_file():
        raise WeightsError(f"downloading {url} did not produce {target}; put the file there or pass {flag} PATH.")
    return target


# ----------------------------------------------------------------------------------------------
# Hashing and atomic writes
# ----------------------------------------------------------------------------------------------

_SHA1_MEMO: Dict[Tuple[str, int, int], str] = {}


def file_sha1(path: Path) -> str:
    """sha1 of a file's bytes (remembered per path, size and mtime within a process)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA1_MEMO:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA1_MEMO[key] = digest.hexdigest()
    return _SHA1_MEMO[key]


def settings_hash(settings: Dict[str, Any]) -> str:
    """Stable hash of a settings dict (key order does not matter; paths and the like as str)."""
    text = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def npz_bytes(arrays: Dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=1, sort_keys=True, default=str).encode())


def _read_json(path: Path) -> Optional[dict]:
    try:
        with open(path, "rb") as f:
            obj = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def load_image(path: Path) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3] (alpha dropped; no EXIF rotation, like nerfstudio).

    Raises `ImageReadError` naming the file: PIL's own message for a truncated file does not.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:  # names the file already, and is not a damaged one
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(
            f"{path}: cannot read this image ({type(err).__name__}: {err}); the file is corrupt, truncated or not "
            "an image. Replace it with a good copy (or remove it from the dataset) and run the same command again."
        ) from err


def check_images_readable(image_paths: Iterable[Path]) -> None:
    """Decode every image; `InputFilesError` listing each one that fails (for a loader whose own
    error does not say which file was bad)."""
    errors: List[Exception] = []
    for path in image_paths:
        try:
            load_image(Path(path))
        except ImageReadError as err:
            errors.append(err)
    if errors:
        raise InputFilesError(_list_errors(f"{_count(errors, 'image')} cannot be read", errors), errors)


def _count(items: Sequence[Any], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _list_errors(heading: str, errors: Sequence[Exception]) -> str:
    """`heading`, then one line per error (the first ten)."""
    lines = [str(err) for err in errors[:10]] + ([f"... and {len(errors) - 10} more"] if len(errors) > 10 else [])
    return heading + ":\n  " + "\n  ".join(lines)


# ----------------------------------------------------------------------------------------------
# Extractors and the cache itself
# ----------------------------------------------------------------------------------------------


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
        self.data_dir = Path(data_dir).resolve()
        self.cache_dir = Path(cache_dir).resolve() if cache_dir is not None else self.data_dir / CACHE_FOLDER

    # -- names ---------------------------------------------------------------------------------

    def key(self, image_path: Path) -> str:
        """The image's dataset-relative name (posix); images outside the dataset go by file name."""
        path = Path(image_path).resolve()
        try:
            return path.relative_to(self.data_dir).as_posix()
        except ValueError:
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
        manifest = _read_json(self.manifest_path(product, image_path))
        if manifest is None:
            partial = self.data_path(product, image_path).exists()
            return Lookup("missing", "data without a manifest (interrupted write)" if partial else "not computed")
        if manifest.get("format") != FORMAT_VERSION or manifest.get("product") != product:
            return Lookup("corrupt", "manifest of another format", manifest)
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
        atomic_write_bytes(data_path, data)
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
        return self._load_arrays(product, image_path)

    def _load_arrays(self, product: str, image_path: Path) -> Dict[str, np.ndarray]:
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
            recorded = _read_json(self.cache_dir / "dataset.json")
            if recorded and Path(recorded.get("data_dir", "")) != self.data_dir:
                return (f"{found.reason}: this cache was written for the dataset at {recorded.get('data_dir')}, "
                        "an image of the same name there had other content")
        return f"{found.status}: {found.reason}"

    # -- compute on demand ---------------------------------------------------------------------

    def input_hashes(self, extractor: Extractor, image_path: Path) -> Dict[str, str]:
        """The data sha1 of each product `extractor` requires (they must be valid entries)."""
        hashes = {}
        for name in extractor.requires:
            found = self.lookup(name, image_path)
            if not found.hit:
                raise CacheMissError(f"{extractor.product} of {image_path} needs its {name}, which is "
                                     f"{found.status} ({found.reason}). Compute {name} first.")
            hashes[name] = found.manifest["data_sha1"]
        return hashes

    def get_or_compute(
        self, image_path: Path, extractor: Extractor, image: Optional[np.ndarray] = None
    ) -> Dict[str, np.ndarray]:
        """The entry's arrays, computed and stored first when missing or stale."""
        arrays, _ = self._get_or_compute(image_path, extractor, image)
        return arrays

    def _get_or_compute(self, image_path, extractor, image=None) -> Tuple[Dict[str, np.ndarray], Lookup]:
        inputs = self.input_hashes(extractor, image_path)
        found = self.lookup(extractor.product, image_path, extractor.settings, inputs)
        if found.hit:
            try:
                return self._load_arrays(extractor.product, image_path), found
            except CacheMissError as err:
                found = Lookup("corrupt", str(err))
        if image is None:
            image = load_image(image_path)
        required = {name: self._load_arrays(name, image_path) for name in extractor.requires}
        arrays = extractor(image, image_path, **required)
        self.write(extractor.product, image_path, arrays, extractor.name, extractor.settings, inputs, image.shape[:2])
        return arrays, found

    # -- what the training side reads ----------------------------------------------------------

    def load_masks(self, image_path: Path, image_hw: Optional[Tuple[int, int]] = None) -> Tuple[np.ndarray, np.ndarray]:
        """(coarse, fine) int32 instance maps, resized nearest to `image_hw` when given."""
        arrays = self.read(MASKS, image_path)
        coarse, fine = arrays["coarse"].astype(np.int32), arrays["fine"].astype(np.int32)
        if image_hw is not None and coarse.shape != tuple(image_hw):
            from splatseg_ns.core.masks import MaskError

            h, w = image_hw
            mh, mw = coarse.shape
            if abs(mh / h - mw / w) > 0.02 * max(mh / h, mw / w):
                raise MaskError(f"{self.data_path(MASKS, image_path)}: cached masks are {mw}x{mh} but the image is "
                                f"{w}x{h}. Recompute them: splatseg masks --data {self.data_dir}")
            coarse, fine = resize_nearest(coarse, (h, w)), resize_nearest(fine, (h, w))
        return coarse, fine

    def load_dino(self, image_path: Path) -> np.ndarray:
        """float16 [h, w, k] PCA-reduced DINO features at patch resolution.

        Checks that the entry was made with the scene's current PCA basis."""
        arrays = self.read(DINO, image_path)
        found = self.lookup(DINO, image_path, verify_data=False)
        pca = _read_json(self.cache_dir / DINO / "_pca.json")
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

    def check_dataset(self, image_paths: Sequence[Path], overwrite: bool = False) -> Dict[str, str]:
        """Refuse a cache written for another dataset; then record this one in `dataset.json`.

        Another dataset = `dataset.json` lists images none of which is here with the same name and
        content. Some changed or new images are the same dataset edited (their entries go stale).
        Returns {name: sha1} of `image_paths`.
        """
        current = {self.key(p): file_sha1(p) for p in image_paths}
        record_path = self.cache_dir / "dataset.json"
        recorded = _read_json(record_path)
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


def resize_nearest(ids: np.ndarray, hw: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an id map (sampled at pixel centres), never blending ids."""
    h, w = hw
    rows = np.minimum(((np.arange(h) + 0.5) * ids.shape[0] / h).astype(np.int64), ids.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * ids.shape[1] / w).astype(np.int64), ids.shape[1] - 1)
    return ids[rows[:, None], cols[None, :]]


def _settings_diff(old: Dict[str, Any], new: Dict[str, Any]) -> str:
    old = json.loads(json.dumps(old, default=str))
    new = json.loads(json.dumps(new, default=str))
    changed = [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return ", ".join(changed[:4]) + (" ..." if len(changed) > 4 else "") if changed else "(same values, other hash)"


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------


def shard_images(image_paths: Iterable[Path], shard: Tuple[int, int], cache: FeatureCache) -> List[Path]:
    """Images of shard i of n: the k-th image in dataset-relative name order goes to shard k % n."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    ordered = sorted({Path(p) for p in image_paths}, key=cache.key)
    return [p for k, p in enumerate(ordered) if k % n == i]


@dataclass
class ExtractionSummary:
    """Counts per product: entries found valid ("hit") and computed, by the reason they were."""

    images: int = 0
    counts: Dict[str, Dict[str, int]] = field(default_factory=dict)

    def add(self, product: str, status: str) -> None:
        self.counts.setdefault(product, {}).setdefault(status, 0)
        self.counts[product][status] += 1

    def computed(self, product: str) -> int:
        return sum(n for s, n in self.counts.get(product, {}).items() if s != "hit")


def extract_all(
    image_paths: Sequence[Path],
    products: Sequence[Extractor],
    cache_dir: Optional[Path] = None,
    shard: Tuple[int, int] = (0, 1),
    progress: bool = True,
    data_dir: Optional[Path] = None,
    overwrite_other_dataset: bool = False,
) -> ExtractionSummary:
    """Fill the cache for the images of one shard; only missing, stale or damaged entries are computed.

    Args:
        image_paths: every image of the dataset (all shards get the same list; the split into
            shards and the DINO PCA sample are taken from it deterministically).
        products: the extractors, in any order (a product is computed after those it requires).
        cache_dir: the cache folder; default `data_dir/splatseg_cache`.
        shard: (i, n): this process does image k (in name order) when k % n == i.
        progress: show a tqdm bar with ETA.
        data_dir: the dataset root that image names are relative to; default `cache_dir`'s parent.
        overwrite_other_dataset: reuse a cache folder that holds another dataset's products.

    Raises `InputFilesError` after the loop when some images could not be read or had bad masks
    (every other image is stored first), `OtherDatasetError` before it starts.
    """
    from tqdm.auto import tqdm

    if data_dir is None:
        if cache_dir is None:
            raise ValueError("give data_dir or cache_dir")
        data_dir = Path(cache_dir).resolve().parent
    cache = FeatureCache(data_dir, cache_dir)
    ordered = _dependency_order(products)
    all_images = sorted({Path(p) for p in image_paths}, key=cache.key)
    cache.check_dataset(all_images, overwrite=overwrite_other_dataset)
    for extractor in ordered:
        if extractor.prepare is not None:
            extractor.settings = {**extractor.settings, **extractor.prepare(cache, all_images)}

    mine = shard_images(all_images, shard, cache)
    summary = ExtractionSummary(images=len(mine))
    names = "+".join(e.product for e in ordered)
    bar = tqdm(mine, desc=f"splatseg {names} [shard {shard[0]}/{shard[1]}]", unit="img", disable=not progress)
    failed: List[Exception] = []
    for image_path in bar:
        try:
            _extract_image(cache, image_path, ordered, summary)
        except _bad_input_errors() as err:  # one bad file must not cost the other images' hours of extraction
            failed.append(err)
        bar.set_postfix({p: summary.computed(p) for p in summary.counts}, refresh=False)
    bar.close()
    if failed:
        heading = (f"{_count(failed, 'image')} of {len(mine)} could not be processed (the other entries are stored "
                   f"in {cache.cache_dir} and are kept; a rerun computes only what is missing)")
        raise InputFilesError(_list_errors(heading, failed), failed)
    return summary


def _extract_image(cache: FeatureCache, image_path: Path, ordered: Sequence[Extractor], summary: ExtractionSummary
                   ) -> None:
    """Every product of one image that is not a valid entry yet, in dependency order."""
    image = None
    for extractor in ordered:
        inputs = cache.input_hashes(extractor, image_path)
        found = cache.lookup(extractor.product, image_path, extractor.settings, inputs)
        if found.hit:
            summary.add(extractor.product, "hit")
            continue
        if image is None:
            image = load_image(image_path)
        required = {name: cache._load_arrays(name, image_path) for name in extractor.requires}
        arrays = extractor(image, image_path, **required)
        cache.write(extractor.product, image_path, arrays, extractor.name, extractor.settings, inputs, image.shape[:2])
        summary.add(extractor.product, found.status)


def _bad_input_errors() -> Tuple[type, ...]:
    """Errors that blame one input file (an unreadable image, a missing or bad mask) and leave the others usable."""
    from splatseg_ns.core.masks import MaskError

    return ImageReadError, MaskError


def _dependency_order(products: Sequence[Extractor]) -> List[Extractor]:
    by_name = {e.product: e for e in products}
    if len(by_name) != len(products):
        raise ValueError(f"two extractors for one product: {[e.product for e in products]}")
    ordered: List[Extractor] = []

    def visit(e: Extractor, trail: Tuple[str, ...]) -> None:
        if e in ordered:
            return
        if e.product in trail:
            raise ValueError(f"circular requirement: {' -> '.join(trail + (e.product,))}")
        for name in e.requires:
            if name in by_name:
                visit(by_name[name], trail + (e.product,))
        ordered.append(e)

    for e in products:
        visit(e, ())
    return ordered


# ----------------------------------------------------------------------------------------------
# The extractors `splatseg masks` runs
# ----------------------------------------------------------------------------------------------


def sam_extractor(sam_config=None, device: str = "cpu", model=None) -> Extractor:
    """SAM automatic masks -> coarse/fine uint16 maps (model loaded on first miss)."""
    from splatseg_ns.core.sam_masks import SamMaskConfig, SamMasks

    sam = SamMasks(sam_config or SamMaskConfig(), device=device, model=model)

    def compute(image: np.ndarray) -> Dict[str, np.ndarray]:
        coarse, fine = sam(image)
        dtype = np.uint16 if max(coarse.max(), fine.max()) < 65536 else np.int32
        return {"coarse": coarse.astype(dtype), "fine": fine.astype(dtype)}

    return Extractor(MASKS, "sam", sam.settings, compute)


def folder_extractor(mask_dir: Path) -> Extractor:
    """The user's own masks (`mask_dir/coarse|fine/<stem>.png`) as the masks product, so CLIP can embed them."""
    from splatseg_ns.core.masks import FolderMasks

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
    from splatseg_ns.core.dino_features import DinoConfig, DinoFeatures

    dino = DinoFeatures(dino_config or DinoConfig(), device=device, model=model)
    settings = dino.settings

    def prepare(cache: FeatureCache, images: List[Path]) -> Dict[str, Any]:
        sample = dino.pca_sample(images)
        pca_path, record_path = cache.cache_dir / DINO / "_pca.npz", cache.cache_dir / DINO / "_pca.json"
        wanted = {"settings_hash": settings_hash(settings), "sample": {cache.key(p): file_sha1(p) for p in sample}}
        record = _read_json(record_path)
        if (
            record is not None
            and all(record.get(k) == v for k, v in wanted.items())
            and pca_path.is_file()
            and file_sha1(pca_path) == record.get("data_sha1")
        ):
            with np.load(pca_path) as npz:
                dino.set_pca(npz["mean"], npz["basis"])
            return {"pca_sha1": record["data_sha1"]}
        mean, basis, explained = dino.fit(load_image(p) for p in sample)
        data = npz_bytes({"mean": mean, "basis": basis})
        atomic_write_bytes(pca_path, data)
        sha = hashlib.sha1(data).hexdigest()
        atomic_write_json(record_path, {**wanted, "data_sha1": sha, "explained_variance": explained})
        return {"pca_sha1": sha}

    return Extractor(DINO, "dino", settings, lambda image: {"features": dino(image)}, prepare=prepare)


def clip_extractor(clip_config=None, device: str = "cpu", model=None, tokenizer=None) -> Extractor:
    """CLIP embeddings of each coarse and fine mask of the cached masks."""
    from splatseg_ns.core.clip_embeddings import ClipConfig, ClipMaskEmbeddings

    clip = ClipMaskEmbeddings(clip_config or ClipConfig(), device=device, model=model, tokenizer=tokenizer)

    def compute(image: np.ndarray, masks: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        out = {}
        for level in ("coarse", "fine"):
            ids, emb = clip(image, masks[level])
            out[f"{level}_ids"], out[f"{level}_emb"] = ids.astype(np.int32), emb.astype(np.float16)
        return out

    return Extractor(CLIP, "clip", clip.settings, compute, requires=(MASKS,))


def run_masks_command(
    data_dir: Path,
    image_paths: Sequence[Path],
    cache_dir: Optional[Path] = None,
    sam_config=None,
    dino: bool = False,
    clip: bool = False,
    shard: Tuple[int, int] = (0, 1),
    dino_config=None,
    clip_config=None,
    device: Optional[str] = None,
    progress: bool = True,
    overwrite_other_dataset: bool = False,
) -> ExtractionSummary:
    """What `splatseg masks --data DIR [--dino] [--clip] [--shard i/n]` does: fill the cache.

    SAM masks always (CLIP embeds them); DINO features and CLIP embeddings when asked. Models
    are loaded only if some entry of this shard needs computing. Prints a one-line summary.
    """
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    extractors = [sam_extractor(sam_config, device)]
    if dino:
        extractors.append(dino_extractor(dino_config, device))
    if clip:
        extractors.append(clip_extractor(clip_config, device))
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(data_dir) / CACHE_FOLDER
    summary = extract_all(image_paths, extractors, cache_dir, shard=shard, progress=progress, data_dir=data_dir,
                          overwrite_other_dataset=overwrite_other_dataset)
    parts = [f"{p}: {summary.computed(p)} computed, {c.get('hit', 0)} cached" for p, c in summary.counts.items()]
    print(f"splatseg masks: {summary.images} images (shard {shard[0]}/{shard[1]}) -> {cache_dir}; " + "; ".join(parts))
    return summary
