"""Filling the cache: every product of every image of one shard, resumable, with a progress bar.

`extract_all` computes only the entries that are missing, stale or damaged, in dependency order
(CLIP embeds the cached masks), and keeps going past a bad input file: an image that cannot be
read, or whose mask is missing or bad, is reported with every other one at the end
(`InputFilesError`, each file named with the fix) after all the others are stored. Shards split
the images by name order (`shard_images`), so n machines can share a big scene.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from splatseg_ns.core.cache import FeatureCache
from splatseg_ns.core.extractors import Extractor
from splatseg_ns.core.images import ImageReadError, InputFilesError, count, list_errors, load_image
from splatseg_ns.core.masks import MaskError

BAD_INPUT_ERRORS = (ImageReadError, MaskError)
"""Errors that blame one input file (an unreadable image, a missing or bad mask) and leave the others usable."""


def shard_images(image_paths: Iterable[Path], shard: Tuple[int, int], cache: FeatureCache) -> List[Path]:
    """Images of shard i of n: the k-th image in dataset-relative name order goes to shard k % n."""
    i, n = shard
    if not (n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
    ordered = sorted({Path(p) for p in image_paths}, key=cache.key)
    return [p for k, p in enumerate(ordered) if k % n == i]


@dataclass
class ExtractionSummary:
    """Counts per product: entries found valid ("hit") and computed, by the reason they were; and per image:
    how many were computed, found cached or failed, in how many seconds, on how many workers."""

    images: int = 0
    counts: Dict[str, Dict[str, int]] = field(default_factory=dict)
    images_computed: int = 0
    images_failed: int = 0
    seconds: float = 0.0
    workers: int = 1

    def add(self, product: str, status: str) -> None:
        self.counts.setdefault(product, {}).setdefault(status, 0)
        self.counts[product][status] += 1

    def computed(self, product: str) -> int:
        return sum(n for s, n in self.counts.get(product, {}).items() if s != "hit")

    @property
    def images_cached(self) -> int:
        return self.images - self.images_computed - self.images_failed

    def line(self) -> str:
        """The closing line: images computed / cached / failed, images per second, workers."""
        rate = self.images_computed / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.images} images: {self.images_computed} computed, {self.images_cached} cached, "
                f"{self.images_failed} failed; {rate:.2f} images/s on {self.workers} worker"
                f"{'' if self.workers == 1 else 's'}")


@dataclass
class ImageJob:
    """What one image still needs: the extractors to run (dependency order), the lookup status that makes each
    run, and the arrays of the already valid entries they are computed from."""

    image_path: Path
    todo: List[Extractor]
    statuses: Dict[str, str]
    cached: Dict[str, Dict[str, np.ndarray]]


def prepare_extraction(
    image_paths: Sequence[Path],
    products: Sequence[Extractor],
    cache_dir: Optional[Path],
    data_dir: Optional[Path],
    overwrite_other_dataset: bool,
) -> Tuple[FeatureCache, List[Extractor], List[Path]]:
    """What is done once before any image: the cache (checked to be this dataset's), the extractors in dependency
    order with their `prepare` run (the DINO PCA fit), and every image in name order."""
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
    return cache, ordered, all_images


def extract_all(
    image_paths: Sequence[Path],
    products: Sequence[Extractor],
    cache_dir: Optional[Path] = None,
    shard: Tuple[int, int] = (0, 1),
    progress: bool = True,
    data_dir: Optional[Path] = None,
    overwrite_other_dataset: bool = False,
    ray=None,
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
        ray: a `core.ray_extraction.RayOptions`: compute on a Ray cluster's workers instead of here
            (this process still plans, reads the images and writes every entry).

    Raises `InputFilesError` after the loop when some images could not be read or had bad masks
    (every other image is stored first), `OtherDatasetError` before it starts.
    """
    start = time.perf_counter()
    cache, ordered, all_images = prepare_extraction(image_paths, products, cache_dir, data_dir,
                                                    overwrite_other_dataset)
    mine = shard_images(all_images, shard, cache)
    summary = ExtractionSummary(images=len(mine))
    if ray is not None:
        from splatseg_ns.core.ray_extraction import extract_on_ray

        failed = extract_on_ray(cache, mine, ordered, ray, summary, progress)
    else:
        failed = _extract_here(cache, mine, ordered, summary, shard, progress)
    summary.images_failed = len(failed)
    summary.seconds = time.perf_counter() - start
    if failed:
        heading = (f"{count(failed, 'image')} of {len(mine)} could not be processed (the other entries are stored "
                   f"in {cache.cache_dir} and are kept; a rerun computes only what is missing)")
        raise InputFilesError(list_errors(heading, failed), failed, summary)
    return summary


def _extract_here(cache: FeatureCache, images: Sequence[Path], ordered: Sequence[Extractor],
                  summary: ExtractionSummary, shard: Tuple[int, int], progress: bool) -> List[Exception]:
    """The serial loop, in this process; the bad input files it met."""
    from tqdm.auto import tqdm

    names = "+".join(e.product for e in ordered)
    bar = tqdm(images, desc=f"splatseg {names} [shard {shard[0]}/{shard[1]}]", unit="img", disable=not progress)
    failed: List[Exception] = []
    for image_path in bar:
        try:
            job = plan_image(cache, image_path, ordered, summary)
            if job.todo:
                image = load_image(image_path)
                store_products(cache, job, compute_products(job, image), image.shape[:2], summary)
        except BAD_INPUT_ERRORS as err:  # one bad file must not cost the other images' hours of extraction
            failed.append(err)
        bar.set_postfix({p: summary.computed(p) for p in summary.counts}, refresh=False)
    bar.close()
    return failed


def plan_image(cache: FeatureCache, image_path: Path, ordered: Sequence[Extractor], summary: ExtractionSummary
               ) -> ImageJob:
    """The products of one image that are not valid entries yet (valid ones are counted as hits). A product
    computed from one that is recomputed is recomputed too: its input will change."""
    todo: List[Extractor] = []
    statuses: Dict[str, str] = {}
    for extractor in ordered:
        if any(name in statuses for name in extractor.requires):
            statuses[extractor.product] = "stale"
            todo.append(extractor)
            continue
        inputs = cache.input_hashes(extractor.product, extractor.requires, image_path)
        found = cache.lookup(extractor.product, image_path, extractor.settings, inputs)
        if found.hit:
            summary.add(extractor.product, "hit")
            continue
        statuses[extractor.product] = found.status
        todo.append(extractor)
    cached = {name: cache.load_arrays(name, image_path)
              for extractor in todo for name in extractor.requires if name not in statuses}
    return ImageJob(Path(image_path), todo, statuses, cached)


def compute_products(job: ImageJob, image: np.ndarray) -> Dict[str, Dict[str, np.ndarray]]:
    """Run the job's extractors on the image, in order, each given the arrays it requires (cached or just made)."""
    arrays = dict(job.cached)
    results = {}
    for extractor in job.todo:
        required = {name: arrays[name] for name in extractor.requires}
        results[extractor.product] = arrays[extractor.product] = extractor(image, job.image_path, **required)
    return results


def store_products(cache: FeatureCache, job: ImageJob, results: Dict[str, Dict[str, np.ndarray]],
                   image_hw: Tuple[int, int], summary: ExtractionSummary) -> None:
    """Write the job's entries in dependency order (an entry records the data of the entries it was made from)."""
    for extractor in job.todo:
        inputs = cache.input_hashes(extractor.product, extractor.requires, job.image_path)
        cache.write(extractor.product, job.image_path, results[extractor.product], extractor.name,
                    extractor.settings, inputs, image_hw)
        summary.add(extractor.product, job.statuses[extractor.product])
    summary.images_computed += 1


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
