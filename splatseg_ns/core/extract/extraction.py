"""Filling the cache: every product of every image of one shard, resumable, with a progress bar.

`extract_all` computes only the entries that are missing, stale or damaged, in dependency order
(CLIP embeds the cached masks), and keeps going past a bad input file: an image that cannot be
read, or whose mask is missing or bad, is reported with every other one at the end
(`InputFilesError`, each file named with the fix) after all the others are stored. Shards split
the images by name order (`shard_images`), so n machines can share a big scene.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from splatseg_ns.core.extract.cache import FeatureCache
from splatseg_ns.core.extract.extractors import Extractor
from splatseg_ns.core.extract.masks import MaskError
from splatseg_ns.core.io.images import ImageReadError, InputFilesError, count, list_errors, load_image

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


Runner = Callable[[FeatureCache, Sequence[Path], Sequence[Extractor], "ExtractionSummary", bool], List[Exception]]
"""Computes and stores the entries of some images (see `extract_all`); returns the bad input files it met."""


@dataclass
class ImageJob:
    """What one image still needs: the extractors to run (dependency order), the lookup status that makes each
    run, and the arrays of the already valid entries they are computed from."""

    image_path: Path
    todo: List[Extractor]
    statuses: Dict[str, str]
    cached: Dict[str, Dict[str, np.ndarray]]


def unreadable_images(image_paths: Iterable[Path]) -> List[Path]:
    """The paths that are no file one can read (a broken or looping link): reported with the bad files, never
    hashed (which would stop the whole run)."""
    return sorted({Path(p) for p in image_paths if not Path(p).is_file()})


def prepare_extraction(
    image_paths: Sequence[Path],
    products: Sequence[Extractor],
    cache: Union[FeatureCache, Path, None],
    data_dir: Optional[Path],
    overwrite_other_dataset: bool,
) -> Tuple[FeatureCache, List[Extractor], List[Path]]:
    """What is done once before any image: the cache (checked to be this dataset's), the extractors in dependency
    order with their `prepare` run (the DINO PCA fit), and every image in name order."""
    if not isinstance(cache, FeatureCache):
        if data_dir is None:
            if cache is None:
                raise ValueError("give data_dir or cache (a FeatureCache or its folder)")
            data_dir = Path(cache).resolve().parent
        cache = FeatureCache(data_dir, cache)
    ordered = _dependency_order(products)
    all_images = sorted({Path(p) for p in image_paths if Path(p).is_file()}, key=cache.key)  # see unreadable_images
    cache.check_dataset(all_images, overwrite=overwrite_other_dataset)
    cache.remove_stale_temporaries()
    for extractor in ordered:
        if extractor.prepare is not None:
            extractor.settings = {**extractor.settings, **extractor.prepare(cache, all_images)}
    return cache, ordered, all_images


def extract_all(
    image_paths: Sequence[Path],
    products: Sequence[Extractor],
    cache: Union[FeatureCache, Path, None] = None,
    shard: Tuple[int, int] = (0, 1),
    progress: bool = True,
    data_dir: Optional[Path] = None,
    overwrite_other_dataset: bool = False,
    runner: Optional[Runner] = None,
) -> ExtractionSummary:
    """Fill the cache for the images of one shard; only missing, stale or damaged entries are computed.

    Args:
        image_paths: every image of the dataset (all shards get the same list; the split into
            shards and the DINO PCA sample are taken from it deterministically).
        products: the extractors, in any order (a product is computed after those it requires).
        cache: the cache (a `FeatureCache` the caller already holds), or its folder; default
            `data_dir/splatseg_cache` (`FeatureCache` decides).
        shard: (i, n): this process does image k (in name order) when k % n == i.
        progress: show a tqdm bar with ETA.
        data_dir: the dataset root that image names are relative to; default the cache folder's parent.
        overwrite_other_dataset: reuse a cache folder that holds another dataset's products.
        runner: what computes the shard's images, `runner(cache, images, extractors, summary, progress)
            -> the bad input files met`; default: this process, one image after another
            (`core.extract.ray_extraction.ray_runner`: a Ray cluster's workers).

    Raises `InputFilesError` after the loop when some images could not be read or had bad masks
    (every other image is stored first), `OtherDatasetError` before it starts.
    """
    start = time.perf_counter()
    cache, ordered, all_images = prepare_extraction(image_paths, products, cache, data_dir,
                                                    overwrite_other_dataset)
    unreadable = shard_images(unreadable_images(image_paths), shard, cache)
    mine = shard_images(all_images, shard, cache)
    summary = ExtractionSummary(images=len(mine) + len(unreadable))
    if runner is None:
        runner = functools.partial(_extract_here, shard=shard)
    failed = [ImageReadError(f"{p}: not a readable file (a broken or looping symbolic link, or a folder); fix or "
                             "remove it") for p in unreadable]
    failed += runner(cache, mine, ordered, summary, progress)
    summary.images_failed = len(failed)
    summary.seconds = time.perf_counter() - start
    if failed:
        heading = (f"{count(failed, 'image')} of {len(mine)} could not be processed (the other entries are stored "
                   f"in {cache.cache_dir} and are kept; a rerun computes only what is missing)")
        raise InputFilesError(list_errors(heading, failed), failed, summary)
    return summary


def _extract_here(cache: FeatureCache, images: Sequence[Path], ordered: Sequence[Extractor],
                  summary: ExtractionSummary, progress: bool, shard: Tuple[int, int]) -> List[Exception]:
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
                for extractor, arrays in compute_products(job, image):
                    store_product(cache, job, extractor, arrays, image.shape[:2], summary)
                summary.images_computed += 1
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
        recomputed_input = any(name in statuses for name in extractor.requires)
        inputs = None if recomputed_input else cache.input_hashes(extractor.product, extractor.requires, image_path)
        found = cache.lookup(extractor.product, image_path, extractor.settings, inputs)
        if found.hit and not recomputed_input:
            summary.add(extractor.product, "hit")
            continue
        statuses[extractor.product] = "stale" if found.hit else found.status
        todo.append(extractor)
    cached = {name: cache.load_arrays(name, image_path)
              for extractor in todo for name in extractor.requires if name not in statuses}
    return ImageJob(Path(image_path), todo, statuses, cached)


def compute_products(job: ImageJob, image: np.ndarray) -> Iterator[Tuple[Extractor, Dict[str, np.ndarray]]]:
    """Run the job's extractors on the image, in order, each given the arrays it requires (cached or just made);
    yields each product as soon as it is made, so that it can be stored before a later one fails."""
    arrays = dict(job.cached)
    for extractor in job.todo:
        required = {name: arrays[name] for name in extractor.requires}
        arrays[extractor.product] = extractor(image, job.image_path, **required)
        yield extractor, arrays[extractor.product]


def store_product(cache: FeatureCache, job: ImageJob, extractor: Extractor, arrays: Dict[str, np.ndarray],
                  image_hw: Tuple[int, int], summary: ExtractionSummary) -> None:
    """Write one entry of the job, recording the data of the entries it was made from (written before it)."""
    inputs = cache.input_hashes(extractor.product, extractor.requires, job.image_path)
    cache.write(extractor.product, job.image_path, arrays, extractor.name, extractor.settings, inputs, image_hw)
    summary.add(extractor.product, job.statuses[extractor.product])


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
