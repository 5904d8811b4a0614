"""Filling the cache: every product of every image of one shard, resumable, with a progress bar.

`extract_all` computes only the entries that are missing, stale or damaged, in dependency order
(CLIP embeds the cached masks), and keeps going past a bad input file: an image that cannot be
read, or whose mask is missing or bad, is reported with every other one at the end
(`InputFilesError`, each file named with the fix) after all the others are stored. Shards split
the images by name order (`shard_images`), so n machines can share a big scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

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
        except BAD_INPUT_ERRORS as err:  # one bad file must not cost the other images' hours of extraction
            failed.append(err)
        bar.set_postfix({p: summary.computed(p) for p in summary.counts}, refresh=False)
    bar.close()
    if failed:
        heading = (f"{count(failed, 'image')} of {len(mine)} could not be processed (the other entries are stored "
                   f"in {cache.cache_dir} and are kept; a rerun computes only what is missing)")
        raise InputFilesError(list_errors(heading, failed), failed)
    return summary


def _extract_image(cache: FeatureCache, image_path: Path, ordered: Sequence[Extractor], summary: ExtractionSummary
                   ) -> None:
    """Every product of one image that is not a valid entry yet, in dependency order."""
    image = None
    for extractor in ordered:
        inputs = cache.input_hashes(extractor.product, extractor.requires, image_path)
        found = cache.lookup(extractor.product, image_path, extractor.settings, inputs)
        if found.hit:
            summary.add(extractor.product, "hit")
            continue
        if image is None:
            image = load_image(image_path)
        required = {name: cache.load_arrays(name, image_path) for name in extractor.requires}
        arrays = extractor(image, image_path, **required)
        cache.write(extractor.product, image_path, arrays, extractor.name, extractor.settings, inputs, image.shape[:2])
        summary.add(extractor.product, found.status)


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
