r"""Does Global Feature-guided Learning (GFL) make splatseg robust to view-inconsistent masks?

Click-Gaussian (arXiv 2407.11793, Sec. 3.3) adds GFL because SAM's masks disagree from view to
view; the paper reports LERF-Mask mIoU 85.4 with GFL and 58.6 without. This harness measures
the same question on the procedural demo scene, where the truth is known exactly:

1. write the demo scene (exact coarse/fine instance masks) and a copy of it whose masks are
   corrupted per view, seeded (`scenes.mask_noise.corrupt_view`, --mask-noise mild by default: random
   merges of two instances, random splits of an instance along a line, ids permuted per view,
   borders eroded to "no mask"; strong: every failure of automatic masks, see that module);
2. train `ns-train splatseg` on the noisy copy twice, identical but for GFL on / off
   (`--pipeline.model.gfl.weight 0`), and once on the clean masks as a reference;
3. click every object (coarse) and part (fine) once in a prompt view, at its deepest pixel, and
   score the selection on other views against the CLEAN masks (`splatseg eval`'s metrics);
4. read each run's time per training step from its tensorboard events (colour steps, feature
   steps before and during GFL, candidate refreshes) and its wall time.

    python benchmarks/bench_gfl_noisy_masks.py                    # 40 views, 96 px, 3 runs: ~5 min on 2 cores
    python benchmarks/bench_gfl_noisy_masks.py --quick            # smoke run: ~2 min
    python benchmarks/bench_gfl_noisy_masks.py --seed 1 --no-clean --tag eps0.1 \
        --train-arg=--pipeline.model.gfl.epsilon-coarse=0.1 --train-arg=--pipeline.model.gfl.epsilon-fine=0.1

One seed is one sample: the seed moves the scene, the mask noise and training, and on this
scene single-seed mIoU differences of 0.1 between GFL on and off come and go with it (a fragmented
object at the coarse level is one prompt in four). Compare over several --seed values.
Training is deterministic for a given seed. Each ns-train runs on --threads (default 1) CPU
threads, so that other work on a shared machine does not swamp the step times.

Everything lands in --output-dir (default outputs/bench_gfl_noisy_masks): the scenes, the
runs, the ns-train logs, the benchmark folders and results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from splatseg_ns.core.features import LEVELS
from splatseg_ns.scenes.mask_noise import NOISE_LEVELS, write_noisy_scene

# ----------------------------------------------------------------------------------------------
# Training and reading the runs
# ----------------------------------------------------------------------------------------------


@dataclass
class RunSpec:
    name: str
    masks: str  # "clean" | "noisy"
    gfl: bool
    data: Path
    extra_args: List[str] = field(default_factory=list)


@dataclass
class RunResult:
    name: str
    masks: str
    gfl: bool
    config: str
    wall_s: float
    ns_train_total_s: Optional[float]
    step_times: Dict[str, Optional[float]]
    schedule: Dict[str, int] = field(default_factory=dict)
    candidates: Dict[str, int] = field(default_factory=dict)
    metrics: Dict[str, Dict[str, Optional[float]]] = field(default_factory=dict)
    error: Optional[str] = None


def train(spec: RunSpec, runs_dir: Path, logs_dir: Path, colour_steps: int, feature_steps: int,
          seed: int, threads: Optional[int] = None) -> tuple:
    """One `ns-train splatseg` subprocess; returns (config.yml, wall seconds)."""
    from splatseg_ns.tools.demo import demo_train_args, ns_train_executable

    args = demo_train_args(spec.data, runs_dir, colour_steps=colour_steps, feature_steps=feature_steps,
                           experiment_name=spec.name, timestamp="run")
    # Each step's own time in "Train Iter (time)" (nerfstudio logs a running mean over 20 steps by default).
    args += ["--machine.seed", str(seed), "--logging.max-buffer-size", "1"]
    if not spec.gfl:
        args += ["--pipeline.model.gfl.weight", "0"]
    args += spec.extra_args
    command = [ns_train_executable(), *args]
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    logs_dir.mkdir(parents=True, exist_ok=True)
    log = logs_dir / f"{spec.name}.log"
    print(f"[{time.strftime('%H:%M:%S')}] training {spec.name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as handle:
        handle.write(" ".join(command) + "\n\n")
        handle.flush()
        result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"ns-train failed for {spec.name} (exit {result.returncode}); log {log}:\n{tail}")
    config = runs_dir / spec.name / "splatseg" / "run" / "config.yml"
    print(f"[{time.strftime('%H:%M:%S')}]   done in {wall:.0f} s: {config}", flush=True)
    return config, wall


def read_scalars(run_dir: Path, tag: str) -> Dict[int, float]:
    """step -> value of one tensorboard scalar of a run (the last value where a step repeats)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values: Dict[int, float] = {}
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags().get("scalars", []):
            values.update({event.step: event.value for event in accumulator.Scalars(tag)})
    return values


def run_schedule(config: Path) -> Dict[str, int]:
    """The run's own schedule from its config.yml (so that extra ns-train flags are honoured)."""
    import yaml

    trainer = yaml.load(Path(config).read_text(), Loader=yaml.Loader)
    model = trainer.pipeline.model
    return {"feature_stage_start": model.feature_stage_start,
            "gfl_start": model.feature_stage_start + model.gfl.start_step,
            "refresh_every": max(1, model.gfl.refresh_every),
            "last_step": trainer.max_num_iterations - 1}


def step_times(config: Path) -> Dict[str, Optional[float]]:
    """Median seconds per step of each phase, from the run's "Train Iter (time)" scalars.

    Phases: colour steps; feature steps before GFL; feature steps while GFL is active; and the
    steps that also rebuild the global candidates (render every view + HDBSCAN; their median,
    and their total). The model rebuilds candidates on GFL's schedule even with
    `--pipeline.model.gfl.weight 0` (and at the last step, for the selection tools).
    """
    times = read_scalars(Path(config).parent, "Train Iter (time)")
    schedule = run_schedule(config)
    colour_steps, gfl_start, last = schedule["feature_stage_start"], schedule["gfl_start"], schedule["last_step"]
    refresh = {s for s in range(gfl_start, last + 1) if (s - gfl_start) % schedule["refresh_every"] == 0}
    refresh |= {last}
    phases: Dict[str, List[float]] = {"colour": [], "feature": [], "feature_gfl": [], "refresh": []}
    for step, seconds in times.items():
        if step < 2:  # warm-up
            continue
        if step < colour_steps:
            phases["colour"].append(seconds)
        elif step in refresh:
            phases["refresh"].append(seconds)
        elif step < gfl_start:
            phases["feature"].append(seconds)
        else:
            phases["feature_gfl"].append(seconds)
    out: Dict[str, Optional[float]] = {k: (statistics.median(v) if v else None) for k, v in phases.items()}
    out["refresh_total"] = float(sum(phases["refresh"])) if phases["refresh"] else None
    out["num_refreshes"] = float(len(phases["refresh"]))
    return out


def view_names(num_views: int, prompt_views: Sequence[int], num_score_views: int):
    """Prompt view names and the score views: evenly spread over the others."""
    name = lambda i: f"frame_{i + 1:05d}.png"  # noqa: E731
    others = [i for i in range(num_views) if i not in prompt_views]
    picks = np.linspace(0, len(others) - 1, min(num_score_views, len(others))).round().astype(int)
    return [name(i) for i in prompt_views], [name(others[i]) for i in sorted(set(picks.tolist()))]


def evaluate_run(config: Path, benchmarks: Dict[str, List[Path]]) -> tuple:
    """(metrics per level over all prompt views, candidate counts) of one run."""
    from splatseg_ns.core.segment.metrics import summarise
    from splatseg_ns.tools.evaluate import evaluate
    from splatseg_ns.trained_run import TrainedRun

    run = TrainedRun(config)
    candidates = {level: int(run.model.levels[level].centers.shape[0]) for level in LEVELS}
    metrics = {}
    for level, dirs in benchmarks.items():
        prompts, per_prompt_iou = [], {}
        for bench in dirs:
            scored = evaluate(run, bench)["prompts"]
            prompts += scored
            per_prompt_iou.update({f"{bench.name}/{p['name']}": round(p["iou"], 3) for p in scored})
        metrics[level] = {**summarise(prompts), "per_prompt_iou": per_prompt_iou}
    return metrics, candidates


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def format_tables(results: List[RunResult]) -> str:
    lines = [
        "| masks | GFL | coarse mIoU | fine mIoU | coarse mBIoU | fine mBIoU | candidates (coarse/fine) "
        "| wall time (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        m = r.metrics
        get = lambda level, key, m=m: m.get(level, {}).get(key)  # noqa: E731
        lines.append(
            f"| {r.masks} | {'on' if r.gfl else 'off'} | {_fmt(get('coarse', 'mIoU'))} | {_fmt(get('fine', 'mIoU'))} "
            f"| {_fmt(get('coarse', 'mBIoU'))} | {_fmt(get('fine', 'mBIoU'))} "
            f"| {r.candidates.get('coarse', 'n/a')}/{r.candidates.get('fine', 'n/a')} | {r.wall_s:.0f} |"
            + (f" error: {r.error}" if r.error else "")
        )
    lines += [
        "",
        "| run | colour step (s) | feature step (s) | feature step, GFL on (s) | feature / colour "
        "| candidate refresh (s, median) | refreshes (total s) | ns-train total (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        t = r.step_times
        ratio = (t["feature"] / t["colour"]) if t.get("feature") and t.get("colour") else None
        lines.append(
            f"| {r.name} | {_fmt(t.get('colour'), 4)} | {_fmt(t.get('feature'), 4)} | {_fmt(t.get('feature_gfl'), 4)} "
            f"| {_fmt(ratio, 2)} | {_fmt(t.get('refresh'), 2)} | {int(t.get('num_refreshes') or 0)} "
            f"({_fmt(t.get('refresh_total'), 1)}) | {_fmt(r.ns_train_total_s, 0)} |"
        )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 views at 64 px, 250 + 150 steps")
    parser.add_argument("--output-dir", type=Path, default=Path("outputs/bench_gfl_noisy_masks"))
    parser.add_argument("--seed", type=int, default=0, help="scene, mask noise and ns-train --machine.seed")
    parser.add_argument("--num-views", type=int, default=None, help="default 40 (16 with --quick)")
    parser.add_argument("--resolution", type=int, default=None, help="default 96 (64 with --quick)")
    parser.add_argument("--colour-steps", type=int, default=None, help="default 600 (250 with --quick)")
    parser.add_argument("--feature-steps", type=int, default=None,
                        help="default 600 (150 with --quick); GFL runs over the last third")
    parser.add_argument("--mask-noise", choices=sorted(NOISE_LEVELS), default="mild",
                        help="the named strength of scenes.mask_noise (default mild: this benchmark's former noise)")
    parser.add_argument("--merge-prob", type=float, default=None, help="override the strength's random-merge rate")
    parser.add_argument("--split-prob", type=float, default=None, help="override the strength's split rate")
    parser.add_argument("--erode-px", type=int, default=None, help="override the strength's erosion")
    parser.add_argument("--no-clean", action="store_true", help="skip the reference run on clean masks")
    parser.add_argument("--train-arg", action="append", default=[],
                        help="extra ns-train argument for every run, e.g. --train-arg=--pipeline.model.gfl.weight=5 "
                        "(repeatable; use the = form)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads of each ns-train (OMP_NUM_THREADS) and of the evaluation; 0 = torch's "
                        "default. Default 1: on a shared 2-core machine, 2 OpenMP threads beside any other busy "
                        "process make small steps up to ~100x slower (barrier spinning), which swamps the timings")
    parser.add_argument("--tag", default="", help="suffix of the run names (keep several settings in one output dir)")
    args = parser.parse_args(argv)

    num_views = args.num_views or (16 if args.quick else 40)
    resolution = args.resolution or (64 if args.quick else 96)
    colour_steps = args.colour_steps or (250 if args.quick else 600)
    feature_steps = args.feature_steps or (150 if args.quick else 600)
    overrides = {"merge_prob": args.merge_prob, "split_prob": args.split_prob, "erode_px": args.erode_px}
    noise = replace(NOISE_LEVELS[args.mask_noise], **{k: v for k, v in overrides.items() if v is not None})
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from splatseg_ns._torchvision_cpu import install

    install()
    from splatseg_ns.scenes.demo_scene import write_demo_scene
    from splatseg_ns.tools.make_benchmark import write_benchmark

    clean = out / "scene_clean"
    noisy = out / "scene_noisy"
    print(f"[{time.strftime('%H:%M:%S')}] writing the demo scene ({num_views} views, {resolution} px) "
          "and its noisy copy", flush=True)
    if clean.exists():
        shutil.rmtree(clean)
    write_demo_scene(clean, num_views=num_views, resolution=resolution, seed=args.seed)
    noise_stats = write_noisy_scene(clean, noisy, noise, args.seed)
    effect = {k: round(v, 3) for k, v in noise_stats.items()}
    print("  noise:", json.dumps(asdict(noise)), "\n  effect:", json.dumps(effect), flush=True)

    # Benchmarks on the clean ground truth: two prompt views (one per camera ring), each scored on other views.
    prompt_indices = [0, num_views // 2 + num_views // 8]
    prompt_views, score_views = view_names(num_views, prompt_indices, 8)
    benchmarks: Dict[str, List[Path]] = {level: [] for level in LEVELS}
    for level in LEVELS:
        for prompt_view in prompt_views:
            bench = out / "benchmarks" / f"{level}_{Path(prompt_view).stem}"
            if bench.exists():
                shutil.rmtree(bench)
            write_benchmark(clean, bench, source=level, prompt_view=prompt_view, score_views=score_views)
            benchmarks[level].append(bench)
    print(f"  prompts on {prompt_views}, scored on {score_views}", flush=True)

    tag = f"_{args.tag}" if args.tag else ""
    specs = [RunSpec(f"noisy_gfl_on{tag}", "noisy", True, noisy, list(args.train_arg)),
             RunSpec(f"noisy_gfl_off{tag}", "noisy", False, noisy, list(args.train_arg))]
    if not args.no_clean:
        specs.append(RunSpec(f"clean_gfl_on{tag}", "clean", True, clean, list(args.train_arg)))

    results: List[RunResult] = []
    for spec in specs:
        config, wall = train(spec, out / "runs", out / "logs", colour_steps, feature_steps, args.seed, args.threads)
        total = read_scalars(config.parent, "Train Total (time)")
        result = RunResult(spec.name, spec.masks, spec.gfl, str(config), wall,
                           next(iter(total.values()), None), step_times(config), run_schedule(config))
        try:
            result.metrics, result.candidates = evaluate_run(config, benchmarks)
        except Exception as err:  # a run without candidates still gets its row
            result.error = f"{type(err).__name__}: {err}"
        results.append(result)

    schedule = results[0].schedule  # the same for every run (they share all flags but the GFL weight)
    gfl_start = schedule["gfl_start"] - schedule["feature_stage_start"]
    refresh_every = schedule["refresh_every"]
    report = {
        "settings": {"num_views": num_views, "resolution": resolution, "colour_steps": colour_steps,
                     "feature_steps": feature_steps, "gfl_start_step": gfl_start, "gfl_refresh_every": refresh_every,
                     "seed": args.seed,
                     "train_args": args.train_arg, "noise": asdict(noise), "noise_effect": noise_stats,
                     "prompt_views": prompt_views, "score_views": score_views,
                     "threads": args.threads or "torch default",
                     "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end"},
        "runs": [asdict(r) for r in results],
    }
    (out / f"results{tag}.json").write_text(json.dumps(report, indent=1))
    print()
    print(f"demo scene {num_views} views x {resolution} px; {colour_steps} colour + {feature_steps} feature steps "
          f"(GFL from feature step {gfl_start}, refresh every {refresh_every}); "
          f"noise {asdict(noise)}; seed {args.seed}; threads {args.threads or 'default'}"
          + (f"; extra {args.train_arg}" if args.train_arg else ""))
    print(format_tables(results))
    print(f"\nresults: {out / f'results{tag}.json'}")


if __name__ == "__main__":
    main()
