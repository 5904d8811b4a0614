"""`splatseg make-benchmark`: write the contract's benchmark format (prompts.json + gt/<name>/<stem>.png) from object masks.

Two sources of per-view object masks:
- "coarse" / "fine": instance-id maps (the `DIR/coarse|fine/<stem>.png` folders, e.g. the demo
  scene): one prompt per instance visible in the prompt view;
- "alpha": the images' alpha channel (e.g. the NeRF-synthetic lego scene): one prompt, "object".
Each prompt clicks the prompt view once, at the pixel deepest inside the object (the maximum of
its distance transform), and is scored on the score views.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Literal, Sequence

import numpy as np
from PIL import Image

from splatseg_ns.core.images import names_image
from splatseg_ns.core.masks import FolderMasks

Source = Literal["coarse", "fine", "alpha"]


def find_image(data_dir: Path, name: str) -> Path:
    """An image of the dataset by file name or stem, or by a path relative to the dataset (`test/r_0.png`),
    which is how to tell apart equal names in different folders."""
    wanted = Path(name)
    images = sorted(
        p for p in Path(data_dir).rglob("*")
        if p.is_file() and p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.parent.name not in ("coarse", "fine")
        and names_image(wanted, p)
    )
    if not images:
        raise FileNotFoundError(f"No image named {name!r} under {data_dir}.")
    if len(images) > 1 and len(wanted.parts) == 1:
        found = ", ".join(str(p.relative_to(data_dir)) for p in images[:4])
        raise FileNotFoundError(f"{name!r} names several images under {data_dir} ({found}); give its folder too, "
                                f"e.g. {images[0].relative_to(data_dir)}.")
    return images[0]


def view_name(data_dir: Path, image: Path, name: str) -> str:
    """How prompts.json names a view: as the user named it when that took a folder, else by file name."""
    return name if len(Path(name).parts) > 1 else image.name


def object_masks(data_dir: Path, image: Path, source: Source) -> Dict[str, np.ndarray]:
    """name -> bool [H, W] for every object visible in this image."""
    with Image.open(image) as im:
        size = im.size
        if source == "alpha":
            if "A" not in im.getbands():
                raise ValueError(f"{image} has no alpha channel to take the object mask from.")
            return {"object": np.array(im.getchannel("A")) > 127}
    ids = FolderMasks(Path(data_dir)).load(image, (size[1], size[0]))[0 if source == "coarse" else 1]
    return {f"{source}_{i}": ids == i for i in np.unique(ids) if i > 0}


def deepest_pixel(mask: np.ndarray) -> List[int]:
    """(x, y) of the pixel farthest from the mask's border and the image's: a click that surely lands on
    the object (and stays clear of the edge that undistortion crops)."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(np.argmax(depth), mask.shape)
    return [int(x), int(y)]


def write_benchmark(data_dir: Path, output_dir: Path, source: Source, prompt_view: str,
                    score_views: Sequence[str], min_pixels: int = 20) -> List[dict]:
    """Write prompts.json and gt masks; returns the prompts."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    prompt_image = find_image(data_dir, prompt_view)
    level = "fine" if source == "fine" else "coarse"
    prompts = []
    score_masks = {view: object_masks(data_dir, find_image(data_dir, view), source) for view in score_views}
    for name, mask in object_masks(data_dir, prompt_image, source).items():
        if mask.sum() < min_pixels:
            continue
        prompts.append({"name": name, "view": view_name(data_dir, prompt_image, prompt_view), "positive": [deepest_pixel(mask)],
                        "negative": [], "level": level})
        for view, masks in score_masks.items():
            gt = masks.get(name, np.zeros_like(mask))
            path = output_dir / "gt" / name / f"{Path(view).stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray((gt * 255).astype(np.uint8)).save(path)
    if not prompts:
        raise ValueError(f"No object of at least {min_pixels} pixels in {prompt_image} ({source} masks).")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "prompts.json").write_text(json.dumps(prompts, indent=1))
    return prompts
