"""`splatseg masks`: precompute the per-image cache (SAM masks; CLIP embeddings, DINO features) outside training.

The same cache `ns-train splatseg` fills on first use (`core.extract.extraction.extract_all` with the
`core.extract.extractors`), so a big scene can be extracted ahead of time, on n GPUs or machines at once
(`--shard i/n`), and training then only reads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from splatseg_ns.core.extract.cache import FeatureCache
from splatseg_ns.core.extract.extraction import ExtractionSummary, Runner, extract_all
from splatseg_ns.core.extract.extractors import clip_extractor, dino_extractor, sam_extractor
from splatseg_ns.core.io.images import IMAGE_SUFFIXES, InputFilesError


def dataset_images(data: Path) -> List[Path]:
    """The images of a dataset folder: those in DATA/images/, else in DATA itself, by name."""
    folder = data / "images" if (data / "images").is_dir() else data
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def run_masks(
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
    runner: Optional[Runner] = None,
) -> ExtractionSummary:
    """Fill the cache: SAM masks always (CLIP embeds them); DINO features and CLIP embeddings when asked.

    Models are loaded only if some entry of this shard needs computing; `runner` computes elsewhere (Ray).
    Prints a one-line summary, also when some images could not be processed.
    """
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    extractors = [sam_extractor(sam_config, device)]
    if dino:
        extractors.append(dino_extractor(dino_config, device))
    if clip:
        extractors.append(clip_extractor(clip_config, device))
    cache = FeatureCache(data_dir, cache_dir)  # the cache decides its default place
    cache_dir = cache.cache_dir
    try:
        summary = extract_all(image_paths, extractors, cache, shard=shard, progress=progress,
                              overwrite_other_dataset=overwrite_other_dataset, runner=runner)
    except InputFilesError as err:
        if err.summary is not None:
            _report(err.summary, shard, cache_dir)
        raise
    _report(summary, shard, cache_dir)
    return summary


def _report(summary: ExtractionSummary, shard: Tuple[int, int], cache_dir: Path) -> None:
    parts = [f"{p}: {summary.computed(p)} computed, {c.get('hit', 0)} cached" for p, c in summary.counts.items()]
    print(f"splatseg masks (shard {shard[0]}/{shard[1]}) -> {cache_dir}: {summary.line()}"
          + "".join(f"; {part}" for part in parts))
