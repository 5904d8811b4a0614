"""splatseg end to end on the real scenes of ../shared/data, on the CPU at low resolution: train,
click an object, export it, draw it, and score the selection on views it was not trained on.

    python benchmarks/bench_real_scenes.py --scene lego [--colour-steps 1500] [--feature-steps 500] [--scale 0.5]
    python benchmarks/bench_real_scenes.py --scene fox  [--colour-steps 1500] [--feature-steps 500] [--scale 0.5]

SAM's weights cannot be downloaded here, so the training masks are stand-ins written by this script:
- colour parts: k-means on Lab colour over all training images (shared centres, so a part keeps its
  label from view to view), then connected pieces of each colour, small ones dropped. Not SAM:
  boundaries follow colour, not objects, and the pieces change from view to view, which is what
  GFL is there to absorb.
- lego (NeRF-synthetic, `blender-data`): coarse = the object from the alpha channel (background 0 =
  no mask: an empty background renders no Gaussians to contrast with), fine = colour parts of the
  object. One click on train/r_0 at the coarse level must select the whole lego although its
  parts were trained apart; it is scored against the alpha masks of five test views (r_100..r_180)
  that training never saw (IoU, accuracy, boundary IoU).
- fox (instant-ngp capture, `nerfstudio-data`, OPENCV lens distortion), in two stages as a user
  with a trained splatfacto scene would run it: colour only first; then, from that geometry, the
  object masks (rendered depth of every view -> 3D points -> RANSAC plane of the wall -> what
  stands more than 0.05 in front of it, largest piece: the fox on its plaque), carried back to
  the image files through the lens model; coarse = object / wall, fine = colour parts (8); then
  the feature stage from stage 1's checkpoint (`--load-checkpoint`). One click on the fox in the
  first held-out view, scored on the other held-out views against the same depth-made masks: how
  consistently one click carries to views never trained on, not accuracy against a human mask
  (the fox has none).
Prints a markdown row; the run, the exported PLY and a picture (image | render | selection) stay in
--output-dir. Needs ../shared/data (exits with a message when absent).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LEGO_SCORE_VIEWS = ["test/r_100", "test/r_120", "test/r_140", "test/r_160", "test/r_180"]


def colour_parts(images: Sequence[Path], num_colours: int, valid: Optional[Dict[Path, np.ndarray]] = None,
                 min_area: float = 0.002, seed: int = 0) -> Dict[Path, np.ndarray]:
    """Instance maps (uint16, 0 = no mask) of connected pieces of k-means colour classes, shared over the images."""
    import cv2

    labs = {p: cv2.cvtColor(np.asarray(Image.open(p).convert("RGB")), cv2.COLOR_RGB2LAB) for p in images}
    rng = np.random.default_rng(seed)
    samples = []
    for p, lab in labs.items():
        pixels = lab.reshape(-1, 3)[valid[p].reshape(-1)] if valid is not None else lab.reshape(-1, 3)
        samples.append(pixels[rng.choice(len(pixels), min(2000, len(pixels)), replace=False)])
    samples = np.concatenate(samples).astype(np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 0.5)
    cv2.setRNGSeed(seed)
    _, _, centres = cv2.kmeans(samples, num_colours, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    maps = {}
    for p, lab in labs.items():
        distance = ((lab.reshape(-1, 1, 3).astype(np.float32) - centres[None]) ** 2).sum(-1)
        label = cv2.medianBlur(distance.argmin(1).reshape(lab.shape[:2]).astype(np.uint8), 5)
        ids = np.zeros(label.shape, np.uint16)
        keep = valid[p] if valid is not None else np.ones(label.shape, bool)
        next_id = 1
        for colour in range(num_colours):
            count, pieces, stats, _ = cv2.connectedComponentsWithStats(((label == colour) & keep).astype(np.uint8), 4)
            for piece in range(1, count):
                if stats[piece, cv2.CC_STAT_AREA] >= min_area * label.size:
                    ids[pieces == piece] = next_id
                    next_id += 1
        maps[p] = ids
    return maps


def save_masks(mask_dir: Path, level: str, maps: Dict[Path, np.ndarray]) -> None:
    (mask_dir / level).mkdir(parents=True, exist_ok=True)
    for p, ids in maps.items():
        Image.fromarray(ids.astype(np.uint16)).save(mask_dir / level / (p.stem + ".png"))


def alpha(p: Path) -> np.ndarray:
    with Image.open(p) as im:
        return np.asarray(im.getchannel("A")) > 127


def lego_masks(data: Path, mask_dir: Path) -> None:
    images = sorted((data / "train").glob("*.png"))
    objects = {p: alpha(p) for p in images}
    save_masks(mask_dir, "coarse", {p: m.astype(np.uint16) for p, m in objects.items()})
    save_masks(mask_dir, "fine", colour_parts(images, 5, valid=objects))


@torch.no_grad()
def object_in_front_of_the_wall(run, view_names: Sequence[str], margin: float = 0.05, seed: int = 0
                                ) -> Dict[str, np.ndarray]:
    """Per view (by image name), a bool mask on the image file of what stands out from the wall.

    The fox hangs on a wall: every view's rendered depth becomes 3D points, RANSAC finds the wall's
    plane, and what lies more than `margin` (scene units) in front of it, kept as the largest
    connected piece, is the object (fox and plaque). The rendered (undistorted, cropped) mask is
    carried back to the image file's pixels through the view's lens model.
    """
    import cv2
    from scipy.ndimage import binary_opening, label

    from splatseg_ns.core.extract.masks import undistort_pixels

    rendered = {}
    for name in view_names:
        view = run.view(name)
        out = run.render(view)
        rays = view.camera.generate_rays(camera_indices=0)
        forward = -view.camera.camera_to_worlds[0, :3, 2]
        along = (out["depth"][..., 0] / (rays.directions @ forward)).unsqueeze(-1)  # z-depth -> distance on the ray
        rendered[name] = (view, (rays.origins + rays.directions * along).cpu().numpy(), out["accumulation"][..., 0].cpu().numpy())
    rng = np.random.default_rng(seed)
    points = np.concatenate([p[a > 0.9] for _, p, a in rendered.values()])
    points = points[rng.choice(len(points), min(len(points), 200_000), replace=False)]
    best, plane = -1, None
    for _ in range(500):
        a, b, c = points[rng.choice(len(points), 3, replace=False)]
        normal = np.cross(b - a, c - a)
        if np.linalg.norm(normal) < 1e-12:
            continue
        normal /= np.linalg.norm(normal)
        inliers = int((np.abs((points - a) @ normal) < 0.02).sum())
        if inliers > best:
            best, plane = inliers, (normal, a)
    normal, origin = plane
    cameras = np.stack([v.camera.camera_to_worlds[0, :3, 3].cpu().numpy() for v, _, _ in rendered.values()])
    normal = normal * np.sign(((cameras - origin) @ normal).mean())  # positive towards the cameras
    masks = {}
    for name, (view, points_3d, accumulation) in rendered.items():
        near = binary_opening(((points_3d - origin) @ normal > margin) & (accumulation > 0.5), np.ones((3, 3)))
        pieces, count = label(near)
        if count:
            near = pieces == 1 + np.argmax(np.bincount(pieces.reshape(-1))[1:])
        source = view.source_camera  # back to the image file: every file pixel's place in the render
        sw, sh = int(source.width.item()), int(source.height.item())
        ys, xs = np.mgrid[0:sh, 0:sw]
        grid = np.stack([xs.reshape(-1), ys.reshape(-1)], -1).astype(np.float64)
        if view.lens is not None:
            grid = undistort_pixels(grid, *view.lens[:2], (sw, sh), fisheye=view.lens[2])
        col, row = np.round(grid[:, 0]).astype(int), np.round(grid[:, 1]).astype(int)
        inside = (col >= 0) & (col < near.shape[1]) & (row >= 0) & (row < near.shape[0])
        on_file = np.zeros(sh * sw, bool)
        on_file[inside] = near[row[inside], col[inside]]
        masks[name] = cv2.resize(on_file.reshape(sh, sw).astype(np.uint8), view.file_size, interpolation=cv2.INTER_NEAREST) > 0
    return masks


def write_prompt(bench: Path, name: str, view: str, click: List[int], gt: Dict[str, np.ndarray]) -> None:
    (bench / "gt" / name).mkdir(parents=True, exist_ok=True)
    (bench / "prompts.json").write_text(json.dumps([{"name": name, "view": view, "positive": [click], "negative": [],
                                                     "level": "coarse"}], indent=1))
    for stem, mask in gt.items():
        Image.fromarray(mask.astype(np.uint8) * 255).save(bench / "gt" / name / f"{stem}.png")


def picture(run, view_name: str, click: List[int], selected, path: Path) -> None:
    """The image file | the render | the selection highlighted | the selection alone."""
    from splatseg_ns.tools.evaluate import render_selection_mask

    view = run.view(view_name)
    rgb = run.render(view)["rgb"].clamp(0, 1).cpu().numpy()
    mask = render_selection_mask(run, view, selected)[..., None]
    image = np.asarray(Image.open(view.image_path).convert("RGB").resize(view.size), dtype=np.float32) / 255
    column, row = view.render_pixel(*click)
    highlighted = np.where(mask, 0.5 * rgb + 0.5 * np.array([1.0, 0.1, 0.1]), 0.35 * rgb + 0.65)
    for panel in (image, highlighted):
        panel[max(0, row - 1): row + 2, max(0, column - 1): column + 2] = 0.0
    strip = np.concatenate([image, rgb, highlighted, np.where(mask, rgb, 1.0)], axis=1)
    Image.fromarray((strip * 255).astype(np.uint8)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", choices=["lego", "fox"], required=True)
    parser.add_argument("--colour-steps", type=int, default=1500)
    parser.add_argument("--feature-steps", type=int, default=500)
    parser.add_argument("--num-random", type=int, default=5000, help="random initial Gaussians (neither scene has seed points)")
    parser.add_argument("--scale", type=float, default=0.5, help="camera resolution scale (lego 0.5: 100x100 px; fox 0.5: 135x240)")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: /tmp/splatseg_<scene>")
    args = parser.parse_args()
    data = DATA / ("lego_small" if args.scene == "lego" else "fox_small")
    if not data.exists():
        raise SystemExit(f"{data} is absent: this benchmark needs the shared data folder beside the project.")
    out = args.output_dir or Path(f"/tmp/splatseg_{args.scene}")

    from splatseg_ns.core.io.selection_file import write_selection
    from splatseg_ns.tools.demo import demo_train_args, run_ns_train
    from splatseg_ns.tools.evaluate import evaluate
    from splatseg_ns.tools.export import export_selection
    from splatseg_ns.tools.make_benchmark import deepest_pixel
    from splatseg_ns.tools.select import select_by_view_clicks
    from splatseg_ns.trained_run import TrainedRun

    bench = out / "benchmark"
    common = ["--pipeline.model.num-random", str(args.num_random), "--pipeline.model.random-scale", "3.0",
              "--pipeline.datamanager.camera-res-scale-factor", str(args.scale)]
    if args.scene == "lego":
        lego_masks(data, out / "masks")
        view = "train/r_0.png"
        gt = {Path(v).name: alpha(data / f"{v}.png") for v in LEGO_SCORE_VIEWS}
        click = deepest_pixel(alpha(data / "train" / "r_0.png"))
        write_prompt(bench, "lego", view, click, gt)
        train_args = demo_train_args(data, out / "runs", args.colour_steps, args.feature_steps, args.scene, "bench")
        train_args += ["--pipeline.datamanager.mask-dir", str(out / "masks"), *common, "blender-data"]
        start = time.perf_counter()
        run_ns_train(train_args)
    else:
        images = sorted((data / "images").glob("*.jpg"))
        held_out = images[::10]  # nerfstudio-data's "interval" split below holds out every 10th image (sorted by name)
        view, eval_images = held_out[0].name, held_out[1:]
        dataparser = ["nerfstudio-data", "--eval-mode", "interval", "--eval-interval", "10"]
        save_masks(out / "masks", "fine", colour_parts(images, 8))
        save_masks(out / "masks", "coarse", colour_parts(images, 4))  # stage 1 only: replaced below
        start = time.perf_counter()
        # stage 1: colour only; its geometry gives the object masks
        stage1 = demo_train_args(data, out / "runs", args.colour_steps, args.feature_steps, args.scene, "colour")
        stage1[stage1.index("--max-num-iterations") + 1] = str(args.colour_steps)
        run_ns_train([*stage1, "--pipeline.datamanager.mask-dir", str(out / "masks"), *common, *dataparser])
        colour_run = TrainedRun(out / "runs" / args.scene / "splatseg" / "colour" / "config.yml")
        objects = object_in_front_of_the_wall(colour_run, [p.name for p in images])
        del colour_run
        save_masks(out / "masks", "coarse", {p: np.where(objects[p.name], 1, 2).astype(np.uint16) for p in images})
        if objects[view].sum() < 50:
            raise SystemExit(f"No object stands out from the wall in {view}: train the colour stage longer (--colour-steps).")
        click = deepest_pixel(objects[view])
        write_prompt(bench, "fox", view, click, {p.stem: objects[p.name] for p in eval_images})
        # stage 2: the features, from stage 1's last checkpoint
        checkpoint = out / "runs" / args.scene / "splatseg" / "colour" / "nerfstudio_models" / f"step-{args.colour_steps - 1:09d}.ckpt"
        train_args = demo_train_args(data, out / "runs", args.colour_steps, args.feature_steps, args.scene, "bench")
        run_ns_train([*train_args, "--load-checkpoint", str(checkpoint), "--pipeline.datamanager.mask-dir", str(out / "masks"),
                      *common, *dataparser])
    train_s = time.perf_counter() - start

    run = TrainedRun(out / "runs" / args.scene / "splatseg" / "bench" / "config.yml")
    metrics = evaluate(run, bench)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    selection = select_by_view_clicks(run, view, [tuple(click)], level="coarse")
    write_selection(out / "selection.json", selection)
    start = time.perf_counter()
    export_selection(run, selection, out / "selection.json", out / f"{args.scene}_object.ply")
    export_s = time.perf_counter() - start
    selected = torch.zeros(run.model.num_points, dtype=torch.bool, device=run.device)
    selected[torch.tensor(selection.indices, dtype=torch.long, device=run.device)] = True
    picture(run, view, click, selected, out / f"{args.scene}_selection.png")

    o, p = metrics["overall"], metrics["prompts"][0]
    print("\n| scene | masks | steps (colour + feature) | Gaussians | selected | views scored | mIoU | mAcc | mBIoU | train (s) | export (s) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    masks = "alpha object / colour parts" if args.scene == "lego" else "object from depth / colour parts (stand-in)"
    size = run.view(view).size
    print(f"| {args.scene} {size[0]}x{size[1]} | {masks} | {args.colour_steps} + {args.feature_steps} | {run.model.num_points} | "
          f"{len(selection.indices)} | {len(p['views'])} | {o['mIoU']:.3f} | {o['mAcc']:.3f} | {o['mBIoU']:.3f} | "
          f"{train_s:.0f} | {export_s:.2f} |")
    print(f"Per view IoU: {[(v['view'], round(v['iou'], 3)) for v in p['views']]}; outputs in {out}")


if __name__ == "__main__":
    main()
