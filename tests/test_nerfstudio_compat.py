"""The nerfstudio 1.1.5 workarounds: CPU seed colours, resumed runs that train to the end, weights_only loading, old configs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List

import pytest
import torch
from nerfstudio.engine.optimizers import Optimizers

from splatseg_ns.method_config import splatseg_trainer_config
from splatseg_ns.model import SplatsegModel, SplatsegModelConfig
from splatseg_ns.nerfstudio_compat import world_to_camera
from splatseg_ns.tools.demo import demo_train_args, ns_train_executable
from tests.helpers import make_model


class _Trainer:
    def __init__(self, start, total):
        self._start_step = start
        self.config = type("C", (), {"max_num_iterations": total})()


COLOUR_STEPS, FEATURE_STEPS = 250, 150  # as the trained_demo_run fixture
TOTAL = COLOUR_STEPS + FEATURE_STEPS


PROMPT_VIEW = "frame_00001.png"


SCORE_VIEWS = [f"frame_{i:05d}.png" for i in (4, 7, 10, 13)]


def train(args: List[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1")
    result = subprocess.run([ns_train_executable(), *args], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def with_max_iterations(args: List[str], steps: int) -> List[str]:
    args = list(args)
    args[args.index("--max-num-iterations") + 1] = str(steps)
    return args


def checkpoint_steps(run_dir: Path) -> List[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / "nerfstudio_models").glob("step-*.ckpt"))


def mean_iou(config: Path, data: Path, bench_dir: Path) -> float:
    from splatseg_ns.tools.evaluate import evaluate
    from splatseg_ns.tools.make_benchmark import write_benchmark
    from splatseg_ns.trained_run import TrainedRun

    if not bench_dir.exists():
        write_benchmark(data, bench_dir, "coarse", PROMPT_VIEW, SCORE_VIEWS)
    return evaluate(TrainedRun(config), bench_dir)["overall"]["mIoU"]


def test_seed_colours_initialise_the_colour_without_cuda():
    model = make_model(num_points=16)
    from nerfstudio.models.splatfacto import SH2RGB

    rgb = SH2RGB(model.features_dc)
    expected = model.seed_points[1].float() / 255
    torch.testing.assert_close(rgb, expected, atol=1e-5, rtol=0)
    assert model.seg_features.shape == (16, 24)
    assert model.strategy.refine_stop_iter <= model.config.feature_stage_start


def test_resumed_optimizers_step_the_loaded_gaussians():
    """After `--load-dir` the model's tensors are new Parameters of the checkpoint's size; the optimizers
    (built before loading) must step those, with the loaded Adam state, or a resumed run never trains."""
    from splatseg_ns.nerfstudio_compat import rebind_optimizers

    trained = make_model(num_points=20)
    trained_opt = Optimizers(splatseg_trainer_config().optimizers, trained.get_param_groups())
    sum(p.sum() for p in trained.gauss_params.values()).backward()
    trained_opt.optimizer_step_all()
    resumed = make_model(num_points=5)
    optimizers = Optimizers(splatseg_trainer_config().optimizers, resumed.get_param_groups())  # nerfstudio's order:
    resumed.load_state_dict(trained.state_dict())  # optimizers first, then the checkpoint
    optimizers.load_optimizers({k: v.state_dict() for k, v in trained_opt.optimizers.items()})
    rebind_optimizers(optimizers.optimizers, resumed.get_gaussian_param_groups())
    before = {k: v.detach().clone() for k, v in resumed.gauss_params.items()}
    sum(p.sum() for p in resumed.gauss_params.values()).backward()
    optimizers.optimizer_step_all()
    for name, value in resumed.gauss_params.items():
        assert not torch.equal(value, before[name]), f"{name} did not train after resuming"
        state = optimizers.optimizers[name].state[value]
        assert state["exp_avg"].shape == value.shape and int(state["step"]) == 2  # the loaded Adam state went on


def test_resume_trains_up_to_max_iterations_not_that_many_more():
    from splatseg_ns.nerfstudio_compat import finish_at_max_iterations

    fresh, resumed = _Trainer(0, 400), _Trainer(134, 400)
    finish_at_max_iterations(fresh)
    finish_at_max_iterations(resumed)
    assert fresh.config.max_num_iterations == 400
    assert resumed.config.max_num_iterations == 266  # nerfstudio's loop: range(134, 134 + 266) ends at 399
    with pytest.raises(ValueError, match="Raise --max-num-iterations"):
        finish_at_max_iterations(_Trainer(400, 400))


def test_world_to_camera_inverts_the_pose():
    c2w = torch.eye(4)[:3].clone()
    c2w[:, 3] = torch.tensor([1.0, 2.0, 3.0])
    viewmat = world_to_camera(c2w[None])[0]
    # the camera centre maps to the origin, and a point in front (-Z in OpenGL) has positive depth
    centre = torch.tensor([1.0, 2.0, 3.0, 1.0])
    torch.testing.assert_close(viewmat @ centre, torch.tensor([0.0, 0.0, 0.0, 1.0]))
    ahead = torch.tensor([1.0, 2.0, 2.0, 1.0])
    assert (viewmat @ ahead)[2] > 0


def test_ns_export_loads_the_run_with_modern_torch(trained_demo_run: Path, tmp_path):
    """nerfstudio's own exporter (torch.load with weights_only) reads a splatseg run, no env vars needed."""
    import os
    import subprocess
    import sys

    from splatseg_ns.core.io.ply import read_gaussians_ply

    ns_export = Path(sys.executable).parent / "ns-export"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    result = subprocess.run(
        [str(ns_export), "gaussian-splat", "--load-config", str(trained_demo_run), "--output-dir", str(tmp_path)],
        capture_output=True, text=True, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ply = read_gaussians_ply(tmp_path / "splat.ply")
    assert len(ply["x"]) > 1000 and "f_dc_0" in ply


@pytest.mark.parametrize("interrupt_after", [133, 360], ids=["colour-stage", "feature-stage-after-gfl-started"])
def test_interrupted_run_resumes_to_the_same_end(interrupt_after, demo_scene, trained_demo_run, tmp_path):
    base = demo_train_args(demo_scene, tmp_path, COLOUR_STEPS, FEATURE_STEPS, timestamp="first")
    train(with_max_iterations(base, interrupt_after + 1))  # as if killed right after this checkpoint
    first = tmp_path / "demo" / "splatseg" / "first"
    assert checkpoint_steps(first)[-1] == interrupt_after

    resumed_args = demo_train_args(demo_scene, tmp_path, COLOUR_STEPS, FEATURE_STEPS, timestamp="resumed")
    result = train([*resumed_args, "--load-dir", str(first / "nerfstudio_models")])
    assert f"resuming at step {interrupt_after + 1} of {TOTAL}" in result.stdout
    resumed = tmp_path / "demo" / "splatseg" / "resumed"
    assert checkpoint_steps(resumed)[-1] == TOTAL - 1  # the same last step as the uninterrupted run

    import torch

    state = torch.load(resumed / "nerfstudio_models" / f"step-{TOTAL - 1:09d}.ckpt", map_location="cpu", weights_only=False)
    assert state["pipeline"]["_model.levels.coarse.centers"].shape[0] >= 2

    bench = tmp_path.parent / "resume_bench"
    reference = mean_iou(trained_demo_run, demo_scene, bench)
    score = mean_iou(resumed / "config.yml", demo_scene, bench)
    assert score > 0.7 and score > reference - 0.08, (score, reference)


def test_a_config_written_before_the_layout_change_still_loads():
    """nerfstudio writes the config classes' module paths into config.yml and loads them back by those paths
    (`eval_setup`: yaml.load with yaml.Loader); this one was written by a run of the layout before issue 10."""
    import yaml

    from splatseg_ns.core.extract.clip_embeddings import ClipConfig
    from splatseg_ns.core.extract.dino_features import DinoConfig
    from splatseg_ns.core.extract.sam_masks import SamMaskConfig
    from splatseg_ns.core.segment.global_candidates import GFLConfig
    from splatseg_ns.core.segment.lifting import VoteConfig
    from splatseg_ns.datamanager import SplatsegDataManager, SplatsegDataManagerConfig

    path = Path(__file__).parent / "data" / "config_before_layout.yml"
    config = yaml.load(path.read_text(), Loader=yaml.Loader)
    model, datamanager = config.pipeline.model, config.pipeline.datamanager
    assert isinstance(model, SplatsegModelConfig) and model._target is SplatsegModel
    assert isinstance(datamanager, SplatsegDataManagerConfig) and datamanager._target is SplatsegDataManager
    assert isinstance(model.gfl, GFLConfig) and model.gfl.start_step == 100
    assert isinstance(datamanager.sam, SamMaskConfig) and isinstance(datamanager.clip_config, ClipConfig)
    assert isinstance(datamanager.dino_config, DinoConfig)
    assert (model.margin_coarse, model.margin_fine, model.feature_stage_start) == (0.5, 0.75, 250)
    assert model.vote == VoteConfig()  # a field added since: its default
    assert config.max_num_iterations == 400 and config.method_name == "splatseg"
