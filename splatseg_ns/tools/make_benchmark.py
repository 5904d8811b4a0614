"""`splatseg make-benchmark`: write the contract's benchmark format (prompts.json + gt/<name>/<stem>.png) from object masks.

Two sources of per-view object masks:
- "coarse" / "fine": instance-id maps (the `DIR/coarse|fine/<stem>.png` folders, e.g. the demo
  scene): one prompt per instance visible in the prompt view;
- "alpha": the images' alpha channel (e.g. the NeRF-synthetic lego scene): one prompt, "object".
Each prompt clicks a prompt view once, at the pixel deepest inside the object (the maximum of
its distance transform), and is scored on the score views where it shows at least `min_pixels`
pixels (where it is hidden, or shows a few, a 1-pixel shift would decide its IoU). With several prompt views, every
object gets a prompt in each (named `<object>@<view stem>`): clicks made in training views and in
views held out of training are scored alike. A dataset whose scene.json names its objects and
parts (the procedural scenes) names the prompts after them, and its `amodal/<name>/` silhouettes
(the object rendered alone) go into the benchmark's `amodal/<prompt>/`, for `splatseg eval` to
score the exported object as a user sees it opened alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Literal, Sequence, Union

import numpy as np
from PIL import Image

from splatseg_ns.core.extract.masks import FolderMasks
from splatseg_ns.core.files import parse_json, path_component
from splatseg_ns.core.io.images import IMAGE_SUFFIXES, names_image
from splatseg_ns.tools.checks import InputError

Source = Literal["coarse", "fine", "alpha"]
NOT_IMAGES = {"coarse", "fine", "amodal", "splatseg_cache"}
"""Folders of a dataset whose PNGs are masks, not its images."""


def find_image(data_dir: Path, name: str) -> Path:
    """An image of the dataset by file name or stem, or by a path relative to the dataset (`test/r_0.png`),
    which is how to tell apart equal names in different folders."""
    wanted, data_dir = Path(name), Path(data_dir)
    images = sorted(
        p for p in data_dir.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        and not NOT_IMAGES.intersection(p.relative_to(data_dir).parts[:-1]) and names_image(wanted, p)
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


def entity_names(data_dir: Path, source: Source) -> Dict[int, str]:
    """Instance id -> name of the objects (coarse) or parts (fine), from the dataset's scene.json when it
    names them (the procedural scenes do); empty otherwise."""
    path = Path(data_dir) / "scene.json"
    if not path.exists():
        return {}
    try:
        scene = parse_json(path.read_text())
        objects = scene.get("objects", []) if isinstance(scene, dict) else []
        if source == "coarse":
            named = {int(o["coarse_id"]): o["name"] for o in objects if "coarse_id" in o and "name" in o}
        else:
            named = {int(p["fine_id"]): p["name"] for o in objects for p in o.get("parts", []) if "fine_id" in p}
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError, KeyError) as err:
        raise InputError(f"{path}: cannot read its objects ({type(err).__name__}: {err}); fix or remove the file.") from err
    try:  # each name becomes gt/<name>/ and amodal/<name>/: never a path that leaves --output
        return {number: path_component(name, f"{path}: an object's name") for number, name in named.items()}
    except ValueError as err:
        raise InputError(str(err)) from None


def object_masks(data_dir: Path, image: Path, source: Source) -> Dict[str, np.ndarray]:
    """name -> bool [H, W] for every object visible in this image."""
    with Image.open(image) as im:
        size = im.size
        if source == "alpha":
            if "A" not in im.getbands():
                raise ValueError(f"{image} has no alpha channel to take the object mask from.")
            return {"object": np.array(im.getchannel("A")) > 127}
    ids = FolderMasks(Path(data_dir)).load(image, (size[1], size[0]))[0 if source == "coarse" else 1]
    names = entity_names(data_dir, source)
    return {names.get(int(i), f"{source}_{i}"): ids == i for i in np.unique(ids) if i > 0}


def deepest_pixel(mask: np.ndarray) -> List[int]:
    """(x, y) of the pixel farthest from the mask's border and the image's: a click that surely lands on
    the object (and stays clear of the edge that undistortion crops). Of equally deep pixels (all of a
    thin pole's), the one nearest the mask's centroid: the middle of the pole, not its end against
    another part."""
    from scipy.ndimage import distance_transform_edt

    depth = distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    rows, cols = np.nonzero(depth >= depth.max() - 1e-6)
    centre_row, centre_col = np.argwhere(mask).mean(axis=0)
    best = np.argmin((rows - centre_row) ** 2 + (cols - centre_col) ** 2)
    return [int(cols[best]), int(rows[best])]


def write_benchmark(data_dir: Path, output_dir: Path, source: Source, prompt_view: Union[str, Sequence[str]],
                    score_views: Sequence[str], min_pixels: int = 20) -> List[dict]:
    """Write prompts.json, gt masks and (when the dataset has them) amodal masks; returns the prompts."""
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    prompt_views = [prompt_view] if isinstance(prompt_view, str) else list(prompt_view)
    level = "fine" if source == "fine" else "coarse"
    prompts = []
    score_images = {view: find_image(data_dir, view) for view in score_views}
    score_masks = {view: object_masks(data_dir, image, source) for view, image in score_images.items()}
    for prompt_name in prompt_views:
        prompt_image = find_image(data_dir, prompt_name)
        for entity, mask in object_masks(data_dir, prompt_image, source).items():
            if mask.sum() < min_pixels:
                continue
            name = entity if len(prompt_views) == 1 else f"{entity}@{prompt_image.stem}"
            shown = {view: masks[entity] for view, masks in score_masks.items()
                     if entity in masks and masks[entity].sum() >= min_pixels}  # a few pixels: IoU a coin flip
            if not shown:
                continue
            prompts.append({"name": name, "entity": entity, "view": view_name(data_dir, prompt_image, prompt_name),
                            "positive": [deepest_pixel(mask)], "negative": [], "level": level})
            for view, gt in shown.items():
                _save_binary(output_dir / "gt" / name / f"{Path(view).stem}.png", gt)
                amodal = data_dir / "amodal" / entity / score_images[view].name
                if amodal.exists():
                    with Image.open(amodal) as im:
                        _save_binary(output_dir / "amodal" / name / f"{Path(view).stem}.png", np.array(im.convert("L")) > 127)
    if not prompts:
        raise ValueError(f"No object of at least {min_pixels} pixels in {', '.join(prompt_views)} ({source} masks).")
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "prompts.json").write_text(json.dumps(prompts, indent=1))
    return prompts


def _save_binary(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask * 255).astype(np.uint8)).save(path)
