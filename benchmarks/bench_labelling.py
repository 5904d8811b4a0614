r"""What the labelling that survives automatic masks costs, against the feature stage it follows (CPU).

Issue 21 added to the votes (`core.segment.lifting.cast_votes`) the per-pixel candidates that cut a mask
(`nearest_candidates`, once per view and level) and, optionally, vote smoothing over each Gaussian's
nearest neighbours (`core.segment.neighbourhood`: rounds over the kNN graph of `losses.knn_indices`); and to the export
the neighbours' agreement of the weak members (`core.export.cleanup.neighbour_agreement`). Each is timed
here at 45k Gaussians (the tabletop run) and at 1M, next to one real feature step of the model at that
size (`benchmarks/scale/training.py`'s model and camera), scaled to the feature stage of the tabletop
bench (1200 steps) and of the default schedule (3000 steps).

    python benchmarks/bench_labelling.py                  # 45k and 1M: ~3 min on 2 cores
    python benchmarks/bench_labelling.py --gaussians 45000 --views 43
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def seconds(work: Callable[[], object], repeat: int = 3) -> float:
    """Median wall time of `work` over `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def clustered_means(count: int, seed: int = 0) -> torch.Tensor:
    """Gaussians on 20 blobs, as a scene's surfaces cluster them."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(20, 3, generator=generator) * 4 - 2
    which = torch.randint(0, 20, (count,), generator=generator)
    return centres[which] + 0.1 * torch.randn(count, 3, generator=generator)


def feature_step_seconds(count: int, size: int) -> float:
    """One real feature step (forward, losses with GFL, backward) of the model with `count` Gaussians."""
    from scale.training import build_model, feature_batch, make_camera, synthetic_candidates

    model, optimizers = build_model(count, 0)
    model.set_candidates(synthetic_candidates(model.config.coarse_feature_dim, model.config.seg_feature_dim))
    model.step = model.config.feature_stage_start + model.config.gfl.start_step
    camera, batch = make_camera(size, size), feature_batch(size, size, None, seed=1)

    def step():
        outputs = model.get_outputs(camera)
        sum(model.get_loss_dict(outputs, batch).values()).backward()
        optimizers.zero_grad_all()

    step()  # warm-up (and the smoothness term's kNN table, built once per run)
    return seconds(step, repeat=3)


def measure(count: int, labels: int, views: int, size: int, rounds: int) -> Dict[str, float]:
    from splatseg_ns.core.export.cleanup import neighbour_agreement
    from splatseg_ns.core.segment.lifting import nearest_candidates
    from splatseg_ns.core.segment.losses import knn_indices
    from splatseg_ns.core.segment.neighbourhood import smooth_votes

    means = clustered_means(count)
    weights = torch.rand(count, labels)
    out: Dict[str, float] = {"gaussians": count, "labels": labels}
    out["knn_graph_s"] = seconds(lambda: knn_indices(means, 8), repeat=1)
    neighbours = knn_indices(means, 8)
    out["smooth_s"] = seconds(lambda: smooth_votes(weights, neighbours, rounds, 0.5), repeat=1)
    feature_map, centers = torch.randn(size, size, 24), torch.randn(labels, 24)
    out["cut_per_view_s"] = seconds(lambda: [nearest_candidates(feature_map, centers, 0.8) for _ in range(2)])
    out["cut_all_views_s"] = out["cut_per_view_s"] * views
    selected = torch.zeros(count, dtype=torch.bool)
    selected[: count // 10] = True  # an object of a tenth of the scene, a third of it weak
    weak = torch.arange(0, count // 10, 3).numpy()
    out["export_agreement_s"] = seconds(lambda: neighbour_agreement(means.double().numpy(), selected.numpy(), weak, 16),
                                        repeat=1)
    out["feature_step_s"] = feature_step_seconds(count, size)
    for steps in (1200, 3000):
        out[f"feature_stage_{steps}_s"] = out["feature_step_s"] * steps
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gaussians", type=int, nargs="+", default=[45_000, 1_000_000])
    parser.add_argument("--views", type=int, default=43, help="training views whose masks are cut (tabletop: 43)")
    parser.add_argument("--size", type=int, default=128, help="pixels per side of a view")
    parser.add_argument("--rounds", type=int, default=2, help="smoothing rounds timed")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=Path("outputs/bench_labelling.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from splatseg_ns._torchvision_cpu import install

    install()
    rows = [measure(n, 15 if n < 100_000 else 31, args.views, args.size, args.rounds) for n in args.gaussians]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(rows, indent=1))
    print("| Gaussians | cut masks, all views (s) | kNN graph (s) | smoothing, "
          f"{args.rounds} rounds (s) | export agreement (s) | feature step (s) | feature stage 1200 / 3000 steps (s) "
          "| new labelling / 1200-step stage |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        added = r["cut_all_views_s"] + r["knn_graph_s"] + r["smooth_s"]
        print(f"| {r['gaussians']:,} | {r['cut_all_views_s']:.3f} | {r['knn_graph_s']:.2f} | {r['smooth_s']:.2f} | "
              f"{r['export_agreement_s']:.2f} | {r['feature_step_s']:.3f} | {r['feature_stage_1200_s']:.0f} / "
              f"{r['feature_stage_3000_s']:.0f} | {added / r['feature_stage_1200_s']:.4f} |")


if __name__ == "__main__":
    main()
