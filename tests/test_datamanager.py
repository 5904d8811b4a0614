"""The datamanager on every dataparser (with distortion and downscaling), with SAM, CLIP and DINO, and on a bad image."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from splatseg_ns.core.extract import sam_masks
from splatseg_ns.core.extract.masks import FolderMasks
from splatseg_ns.core.extract.sam_masks import SamMaskConfig
from splatseg_ns.core.io.images import InputFilesError
from splatseg_ns.scenes.demo_scene import write_demo_scene
from splatseg_ns.testing.tiny_models import build_tiny_clip, build_tiny_sam
from splatseg_ns.tools.make_benchmark import deepest_pixel

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


needs_shared = pytest.mark.skipif(not SHARED_DATA.exists(), reason="../shared/data is absent")


def brightness_masks(images: list, mask_dir: Path) -> None:
    """Masks that trace the image itself (1 = brighter than its mean, 2 = darker), so that image and
    mask alignment after undistortion and rescaling can be checked pixel by pixel."""
    for image in images:
        with Image.open(image) as im:
            grey = np.asarray(im.convert("L"), dtype=np.float32)
        ids = np.where(grey > grey.mean(), 1, 2).astype(np.uint8)
        for level in ("coarse", "fine"):
            (mask_dir / level).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids).save(mask_dir / level / (Path(image).stem + ".png"))


def alpha_masks(images: list, mask_dir: Path) -> None:
    for image in images:
        with Image.open(image) as im:
            ids = np.where(np.asarray(im.getchannel("A")) > 127, 1, 2).astype(np.uint8)
        for level in ("coarse", "fine"):
            (mask_dir / level).mkdir(parents=True, exist_ok=True)
            Image.fromarray(ids).save(mask_dir / level / (Path(image).stem + ".png"))


def train_briefly(dataparser, mask_dir: Path, tmp_path: Path, scale: float = 1.0, num_random: int = 2000):
    from splatseg_ns.method_config import splatseg_trainer_config

    config = splatseg_trainer_config()
    config.pipeline.datamanager.dataparser = dataparser
    config.pipeline.datamanager.data = dataparser.data
    config.pipeline.datamanager.mask_dir = mask_dir
    config.pipeline.datamanager.camera_res_scale_factor = scale
    config.output_dir = tmp_path / "outputs"
    config.experiment_name, config.timestamp, config.vis = "parser", "run", "tensorboard"
    config.max_num_iterations = 4
    config.steps_per_save = 1000
    config.steps_per_eval_image = config.steps_per_eval_all_images = 10_000
    model = config.pipeline.model
    model.feature_stage_start, model.num_downscales, model.num_sampled_pixels = 2, 0, 300
    model.num_random, model.gfl.start_step, model.gfl.refresh_every = num_random, 1, 1
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return trainer, config.get_base_dir() / "config.yml"


def check_images_masks_and_pixels(trainer, config_path: Path, mask_dir: Path, traced: bool) -> None:
    """Masks line up with their images in the batch; file pixels and file masks map onto the rendered view."""
    import torch

    from splatseg_ns.trained_run import TrainedRun

    pipeline = trainer.pipeline
    dm = pipeline.datamanager
    run = TrainedRun.from_pipeline(config_path, pipeline)
    for index in (0, len(dm.cached_train) // 2):
        batch = dm.cached_train[index]
        image, coarse = batch["image"], batch["coarse_mask"].cpu().numpy()
        assert coarse.shape == tuple(image.shape[:2])
        if traced:  # the mask was drawn from the image: they must still agree after undistortion/rescaling
            grey = image[..., :3].float().mean(-1).cpu().numpy()
            grey = grey * 255 if grey.max() <= 1.0 else grey
            # the file's mean brightness split them; resampling moves the edges only
            bright = coarse == 1
            separation = grey[bright].mean() - grey[~bright].mean()
            assert separation > 20, separation

        path = Path(dm.train_dataset.image_filenames[index])
        view = run.view(path.name)
        assert view.size == (image.shape[1], image.shape[0])
        with Image.open(FolderMasks(mask_dir).path_for("coarse", path)) as im:
            file_ids = np.asarray(im)
        file_mask = np.array(Image.fromarray(file_ids == 1).resize(view.file_size, Image.NEAREST))
        carried = view.mask_to_render(file_mask)
        mismatch = np.mean(carried != (coarse == 1))
        assert mismatch < 0.002, mismatch  # eval's ground truth is carried exactly like the training masks

        # a click on the file, deep inside a region, lands in the same region of the rendered view
        x, y = deepest_pixel(file_mask)
        column, row = view.render_pixel(float(x), float(y))
        assert coarse[row, column] == 1
    assert torch.isfinite(pipeline.model.seg_features).all()


def write_colmap_scene(demo: Path, out: Path, k1: float) -> Path:
    """The demo scene as a COLMAP text model (OPENCV camera with distortion k1), images and masks beside it."""
    from nerfstudio.data.utils import colmap_parsing_utils as colmap

    for sub in ("images", "coarse", "fine"):
        shutil.copytree(demo / sub, out / sub)
    meta = json.loads((demo / "transforms.json").read_text())
    sparse = out / "colmap" / "sparse" / "0"
    sparse.mkdir(parents=True)
    params = [meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], k1, 0.0, 0.0, 0.0]
    cameras = {1: colmap.Camera(id=1, model="OPENCV", width=meta["w"], height=meta["h"], params=np.array(params))}
    images = {}
    for i, frame in enumerate(meta["frames"], start=1):
        c2w = np.array(frame["transform_matrix"], dtype=np.float64)
        c2w[:3, 1:3] *= -1  # OpenGL -> OpenCV camera axes
        w2c = np.linalg.inv(c2w)
        images[i] = colmap.Image(id=i, qvec=colmap.rotmat2qvec(w2c[:3, :3]), tvec=w2c[:3, 3], camera_id=1,
                                 name=Path(frame["file_path"]).name, xys=np.zeros((0, 2)), point3D_ids=np.zeros(0, int))
    rng = np.random.default_rng(0)
    points = {i: colmap.Point3D(id=i, xyz=rng.uniform(-0.5, 0.5, 3), rgb=rng.integers(0, 255, 3), error=0.0,
                                image_ids=np.zeros(0, int), point2D_idxs=np.zeros(0, int)) for i in range(1, 500)}
    colmap.write_model(cameras, images, points, sparse, ext=".txt")
    return out


def train(config) -> "object":
    trainer = config.setup(local_rank=0, world_size=1)
    trainer.setup()
    trainer.train()
    return trainer


def small_config(data: Path, tmp_path: Path, name: str):
    from splatseg_ns.method_config import splatseg_trainer_config

    config = splatseg_trainer_config()
    config.pipeline.datamanager.data = data
    config.output_dir = tmp_path / "outputs"
    config.experiment_name = "small"
    config.timestamp = name
    config.vis = "tensorboard"
    config.max_num_iterations = 30
    config.steps_per_save = 1000
    config.steps_per_eval_image = config.steps_per_eval_all_images = 10_000
    config.pipeline.model.feature_stage_start = 15
    config.pipeline.model.num_downscales = 0
    config.pipeline.model.num_sampled_pixels = 500
    config.pipeline.model.gfl.start_step = 5
    config.pipeline.model.gfl.refresh_every = 5
    return config


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@needs_shared
def test_blender_lego_downscaled_by_the_datamanager(tmp_path):
    from nerfstudio.data.dataparsers.blender_dataparser import BlenderDataParserConfig

    data = SHARED_DATA / "lego_small"
    alpha_masks(sorted((data / "train").glob("*.png")), tmp_path / "masks")
    trainer, config = train_briefly(BlenderDataParserConfig(data=data), tmp_path / "masks", tmp_path, scale=0.25)
    view = trainer.pipeline.datamanager.train_dataset.cameras
    assert int(view.width[0]) == 50
    check_images_masks_and_pixels(trainer, config, tmp_path / "masks", traced=False)


@needs_shared
@pytest.mark.parametrize("parser", ["nerfstudio-data", "instant-ngp-data"])
def test_fox_with_lens_distortion(parser, tmp_path):
    from nerfstudio.data.dataparsers.instant_ngp_dataparser import InstantNGPDataParserConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    data = SHARED_DATA / "fox_small"
    brightness_masks(sorted((data / "images").glob("*.jpg")), tmp_path / "masks")
    dataparser = NerfstudioDataParserConfig(data=data) if parser == "nerfstudio-data" else InstantNGPDataParserConfig(data=data)
    trainer, config = train_briefly(dataparser, tmp_path / "masks", tmp_path, scale=0.5)
    cameras = trainer.pipeline.datamanager.train_dataset.cameras
    before = trainer.pipeline.datamanager.cameras_before_undistortion["train"]
    assert before.distortion_params.abs().sum() > 0  # the fox's OPENCV k1, k2, p1, p2
    assert (int(cameras.width[0]), int(cameras.height[0])) != (int(before.width[0]), int(before.height[0]))  # cropped
    check_images_masks_and_pixels(trainer, config, tmp_path / "masks", traced=True)


def test_colmap_with_distortion(demo_scene, tmp_path):
    from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

    data = write_colmap_scene(demo_scene, tmp_path / "colmap_scene", k1=0.05)
    brightness_masks(sorted((data / "images").glob("*.png")), tmp_path / "masks")
    trainer, config = train_briefly(ColmapDataParserConfig(data=data), tmp_path / "masks", tmp_path)
    assert trainer.pipeline.datamanager.cameras_before_undistortion["train"].distortion_params[0, 0] == pytest.approx(0.05)
    check_images_masks_and_pixels(trainer, config, tmp_path / "masks", traced=True)


def test_downscaled_image_folder(demo_scene, tmp_path):
    """`--downscale-factor 2` reads images_2/ (as ns-process-data writes it); masks stay at full size."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    data = tmp_path / "scene"
    shutil.copytree(demo_scene, data)
    (data / "images_2").mkdir()
    for image in sorted((data / "images").glob("*.png")):
        with Image.open(image) as im:
            im.resize((im.width // 2, im.height // 2), Image.LANCZOS).save(data / "images_2" / image.name)
    trainer, config = train_briefly(NerfstudioDataParserConfig(data=data, downscale_factor=2), data, tmp_path)
    assert Path(trainer.pipeline.datamanager.train_dataset.image_filenames[0]).parent.name == "images_2"
    assert int(trainer.pipeline.datamanager.train_dataset.cameras.width[0]) == 32
    check_images_masks_and_pixels(trainer, config, data, traced=False)


def test_clip_and_dino_ride_along_and_reach_the_gaussians(tmp_path, monkeypatch):
    from splatseg_ns.core.extract import clip_embeddings, dino_features

    data = write_demo_scene(tmp_path / "scene", num_views=8, resolution=48)
    monkeypatch.setattr(clip_embeddings, "load_clip", lambda config, device="cpu": build_tiny_clip())
    real_load_dino = dino_features.load_dino
    monkeypatch.setattr(dino_features, "load_dino", lambda config, device="cpu": real_load_dino(config, device, False))
    config = small_config(data, tmp_path, "clip_dino")
    config.pipeline.datamanager.text_queries = True  # CLIP: tiny, random weights
    config.pipeline.datamanager.dino = True
    config.pipeline.datamanager.dino_config = dino_features.DinoConfig(resolution=64, num_components=8, pca_images=4)
    config.pipeline.model.dino_feature_dim = 8
    trainer = train(config)
    batch = trainer.pipeline.datamanager.cached_train[0]
    assert batch["dino"].shape[-1] == 8 and batch["clip_coarse_emb"].shape[0] == batch["clip_coarse_ids"].shape[0] > 0
    model = trainer.pipeline.model
    # the candidates gathered their masks' CLIP embeddings (unit rows where a mask was embedded)
    k = model.levels["coarse"].centers.shape[0]
    assert k > 0 and model.levels["coarse"].clip.shape[0] == k
    norms = model.levels["coarse"].clip.norm(dim=-1)
    assert ((norms - 1).abs() < 1e-4).any()
    assert model.gauss_params["dino_features"].abs().sum() > 0


def test_sam_masks_feed_training_and_are_cached(tmp_path, monkeypatch):
    data = write_demo_scene(tmp_path / "scene", num_views=8, resolution=48)
    shutil.rmtree(data / "coarse")  # no masks of the user's: mask source 'auto' falls back to SAM
    shutil.rmtree(data / "fine")
    loads = []

    def fake_load_sam(config, device="cpu"):  # offline: SAM's architecture at toy size, random weights
        loads.append(config.model_type)
        return build_tiny_sam(img_size=64, embed_dim=32, depth=1)

    monkeypatch.setattr(sam_masks, "load_sam", fake_load_sam)

    def make_config(name: str):
        config = small_config(data, tmp_path, name)
        config.pipeline.datamanager.sam = SamMaskConfig(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
        return config

    trainer = train(make_config("first"))
    cache = data / "splatseg_cache" / "masks"
    entries = sorted(cache.rglob("*.npz"))
    assert len(entries) == len(trainer.pipeline.datamanager.train_dataset)
    assert loads == ["vit_h"]
    cached = trainer.pipeline.datamanager.cached_train
    assert all(batch["coarse_mask"].shape == batch["image"].shape[:2] for batch in cached)
    assert any(batch["fine_mask"].max() > 0 for batch in cached)
    model = trainer.pipeline.model
    assert torch.isfinite(model.seg_features).all()
    assert model.seg_features.grad is None or torch.isfinite(model.seg_features.grad).all()

    # a second run reuses the cache: SAM is never loaded, no entry is rewritten
    stamps = [p.stat().st_mtime_ns for p in entries]
    train(make_config("second"))
    assert loads == ["vit_h"]
    assert [p.stat().st_mtime_ns for p in entries] == stamps


def test_training_datamanager_names_a_truncated_image(tmp_path):
    from splatseg_ns._torchvision_cpu import install

    install()
    from splatseg_ns.method_config import splatseg_trainer_config
    from splatseg_ns.scenes.demo_scene import write_demo_scene

    data = write_demo_scene(tmp_path / "scene", num_views=6, resolution=24)
    bad = sorted((data / "images").iterdir())[2]
    truncate(bad)
    datamanager = splatseg_trainer_config().pipeline.datamanager
    datamanager.data = datamanager.dataparser.data = data
    with pytest.raises(InputFilesError, match=rf"{re.escape(str(bad))}: cannot read this image.*Replace it"):
        datamanager.setup(device="cpu").cached_train  # noqa: B018 - nerfstudio loads the images on first use
