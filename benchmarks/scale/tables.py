"""The printed tables and the plan for 3M Gaussians and 1,000 images."""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from scale.bytes_count import GB, MB
from scale.gsplat_buffers import gsplat_estimate


def per_g(value: float, n: int) -> str:
    return f"{value / n:.1f}"


def print_gaussian_tables(results: List[Dict], dino_dim: int) -> Dict[str, float]:
    """Per-group and per-category tables; returns the bytes per Gaussian of the largest size."""
    print("### Measured: memory per Gaussian (bytes / Gaussian), per parameter group\n")
    header = "| group | shape | " + " | ".join(f"param / grad / Adam @ {r['n'] // 1000}k" for r in results) + " |"
    print(header)
    print("|---|---|" + "---:|" * len(results))
    for name in results[0]["groups"]:
        cells = []
        for r in results:
            g = r["groups"][name]
            cells.append(f"{per_g(g['param'], r['n'])} / {per_g(g['grad'], r['n'])} / {per_g(g['adam'], r['n'])}")
        shape = results[0]["groups"][name]["shape"]
        print(f"| {name} | [N, {', '.join(map(str, shape[1:]))}] | " + " | ".join(cells) + " |")
    print(f"\nAdam state keys: {results[0]['groups']['means']['adam_keys']} (step: one scalar per group).\n")

    print("### Measured: per-Gaussian bytes by category\n")
    print("| category | what | " + " | ".join(f"@ {r['n']:,}" for r in results) + " | linear? |")
    print("|---|---|" + "---:|" * len(results) + "---|")
    rows: Dict[str, List[float]] = {}

    def add(label: str, what: str, values: List[float]) -> None:
        rows[label] = values
        per = [v / r["n"] for v, r in zip(values, results)]
        linear = "yes" if max(per) - min(per) <= 0.01 * max(per) + 0.05 else f"no ({min(per):.2f}..{max(per):.2f})"
        print(f"| {label} | {what} | " + " | ".join(f"{p:.1f}" for p in per) + f" | {linear} |")

    def total(r, key, names=None):
        return sum(g[key] for name, g in r["groups"].items() if names is None or name in names)

    seg = ["means", "scales", "quats", "features_dc", "features_rest", "opacities", "seg_features"]
    add("parameters (no DINO)", "6 splatfacto groups + seg_features float32", [total(r, "param", seg) for r in results])
    add("gradients (no DINO)", "same shapes, all groups over the two stages", [total(r, "grad", seg) for r in results])
    add("Adam state (no DINO)", "exp_avg + exp_avg_sq (+ step scalar)", [total(r, "adam", seg) for r in results])
    if dino_dim:
        add(f"DINO feature ({dino_dim} ch): param + grad + Adam", "gauss_params['dino_features']",
            [sum(r["groups"]["dino_features"][k] for k in ("param", "grad", "adam")) for r in results])
    add("densification state", "DefaultStrategy: " + ", ".join(results[0]["strategy"]),
        [sum(r["strategy"].values()) for r in results])
    add("model.info kept between steps", "rasteriser info: means2d (+grad, absgrad), radii, depths, conics, opacities",
        [r["info_bytes"] for r in results])
    add("kNN table (feature stage)", f"model._neighbours {results[0]['neighbours_dtype'].split(' ')[0]} [N, 5]",
        [r["neighbours_bytes"] for r in results])
    for level in ("coarse", "fine"):
        add(f"ClickIndex ({level})", "assignment + similarity + slots (" + results[0]["click_index"][level]["dtypes"] + ")",
            [sum(r["click_index"][level][k] for k in ("assignment", "similarity", "slots")) for r in results])
    print(f"\nNot per Gaussian: other parameters and buffers {results[-1]['other_fixed'] / 1e3:.1f} kB; "
          f"seed points kept by splatfacto {results[-1]['seed_points_bytes'] / results[-1]['n']:.0f} B per seed point; "
          f"rasteriser info fields: " + ", ".join(f"{k} {v}" for k, v in results[-1]["info_fields"].items()) + ".\n")
    last = results[-1]
    return {k: v[-1] / last["n"] for k, v in rows.items()}


def print_step_tables(results: List[Dict], full: Tuple[int, int], dino_dim: int, plan_n: float) -> Dict[str, float]:
    """Measured step peaks and their projection to `plan_n` Gaussians; returns the projection (from the largest size)."""
    print(f"### Measured: one training step's peak above the persistent state, {full[0]}x{full[1]}, "
          "stand-in rasteriser\n")
    print("Gradients + activations + loss temporaries + the render and its gradient, tracked per tensor storage "
          f"over forward, losses and backward. Projected to {plan_n / 1e6:g}M: the same allocation timeline with "
          "every per-Gaussian storage scaled (both sizes should project to the same value). "
          "End: what is still allocated after backward (the gradients), per Gaussian.\n")
    keys = [("colour_peak", "colour stage (L1 + SSIM, SH 3)"), ("feature_peak", "feature stage (24 ch, no DINO)")]
    if dino_dim:
        keys.append(("feature_dino_peak", f"feature stage + DINO {dino_dim} ch"))
    print("| stage | " + " | ".join(f"peak @ {r['n'] // 1000}k (MB)" for r in results) + " | " +
          " | ".join(f"projected to {plan_n / 1e6:g}M from {r['n'] // 1000}k (GB)" for r in results) +
          " | end (B / Gaussian) | s/step (CPU) |")
    print("|---|" + "---:|" * (2 * len(results) + 2))
    for r in results:
        if r["n"] <= r["sample_cap"]:
            print(f"Note: {r['n']:,} Gaussians <= {r['sample_cap']:,} sampled per step by the spatial/GFL terms; "
                  "its projection scales those samples with N and overestimates.\n")
    projected = {}
    for key, label in keys:
        projected[key] = results[-1][key]["projected"][plan_n]
        print(f"| {label} | " + " | ".join(f"{r[key]['peak'] / MB:.0f}" for r in results) + " | " +
              " | ".join(f"{r[key]['projected'][plan_n] / GB:.2f}" for r in results) +
              f" | {results[-1][key]['end_per_gaussian'] / results[-1]['n']:.0f} | {results[-1][key]['seconds']:.1f} |")
    print()
    return projected


def print_cache_tables(rows: List[Dict], plan_images: int) -> Dict:
    products = [p for p in ("masks", "dino", "clip") if f"{p}_disk" in rows[0]]
    print("### Measured: mask cache on disk, bytes per image (npz, savez_compressed)\n")
    print("| image | coarse / fine segments | " + " | ".join(f"{p} disk (raw)" for p in products) +
          " | manifests | total per image | x " + f"{plan_images:,} images |")
    print("|---|---|" + "---:|" * (len(products) + 3))
    by_size: Dict[Tuple[int, int], List[Dict]] = {}
    for r in rows:
        by_size.setdefault(r["size"], []).append(r)
    summary = {}
    for size, rs in by_size.items():
        mean = lambda key, rs=rs: float(np.mean([r[key] for r in rs]))  # noqa: E731
        disk = {p: mean(f"{p}_disk") for p in products}
        raw = {p: mean(f"{p}_raw") for p in products}
        manifests = sum(mean(f"{p}_manifest") for p in products)
        total = sum(disk.values()) + manifests
        segs = " / ".join(f"{np.mean([r['segments'][i] for r in rs]):.0f}" for i in (0, 1))
        print(f"| {size[0]}x{size[1]} | {segs} | " +
              " | ".join(f"{disk[p] / 1e3:.0f} kB ({raw[p] / 1e3:.0f} kB)" for p in products) +
              f" | {manifests / 1e3:.1f} kB | {total / 1e3:.0f} kB | {total * plan_images / GB:.2f} GB |")
        summary[size] = {"disk": disk, "raw": raw, "manifests": manifests, "total": total,
                         "ram": {k: float(np.mean([r["ram"][k] for r in rs])) for k in rs[0]["ram"]},
                         "read": {p: mean(f"{p}_read_s") for p in products}}
    shapes = rows[-1]
    print("\nArrays of the largest entry: " + "; ".join(
        f"{p}: " + ", ".join(f"{k} {d} {s}" for k, (d, s) in shapes[f"{p}_shapes"].items()) for p in products) +
        (f"; plus dino/_pca.npz once per scene ({rows[0]['pca_bytes'] / 1e3:.0f} kB)" if rows[0].get("pca_bytes")
         else "") + ".")
    print(f"Extraction of all {len(rows)} entries (synthetic masks, random-weight DINO/CLIP on CPU): "
          f"{rows[0]['extract_s_all']:.0f} s.\n")

    print("### Measured: RAM the datamanager keeps per training image (cached batch)\n")
    keys = [k for k in next(iter(summary.values()))["ram"] if not k.startswith("_")]
    print("| image | " + " | ".join(keys) + " | total | read from cache (s) |")
    print("|---|" + "---:|" * (len(keys) + 2))
    for size, s in summary.items():
        total = sum(s["ram"][k] for k in keys)
        s["ram_total"] = total
        print(f"| {size[0]}x{size[1]} | " + " | ".join(f"{s['ram'][k] / MB:.2f} MB" for k in keys) +
              f" | {total / MB:.2f} MB | {sum(s['read'].values()):.2f} |")
    print()
    return summary


def print_plan(args, per_gaussian: Dict[str, float], fits: Dict, summary: Dict, full: Tuple[int, int]) -> None:
    n = args.plan_gaussians
    pixels = full[0] * full[1]
    budget = args.gpu_gb * GB
    t = args.tiles_per_gaussian
    print(f"### Estimate (gsplat 1.4.0's own buffers, not measured: no GPU), {full[0]}x{full[1]}, one camera, "
          f"unpacked, {t:g} tiles per Gaussian\n")
    print("| stage | renders | per Gaussian (B) | per intersection (B) | per pixel (B) | "
          f"at {n / 1e6:g}M Gaussians (GB) |")
    print("|---|---:|---:|---:|---:|---:|")
    estimates = {}
    stages = [("colour", "colour", 0), ("feature", "feature (24 ch)", 0)]
    if args.dino_dim:
        stages.append(("feature_dino", f"feature + DINO {args.dino_dim} ch", args.dino_dim))
    for key, label, dino in stages:
        e = gsplat_estimate("colour" if key == "colour" else "feature", 24, dino)
        size = n * e["per_gaussian"] + n * t * e["per_isect"] + pixels * e["per_pixel"]
        estimates[key] = size
        print(f"| {label} | {e['renders']} | {e['per_gaussian']} | {e['per_isect']} | {e['per_pixel']} | {size / GB:.2f} |")
    print(f"\nAssumptions: every Gaussian in the frustum (unpacked buffers are [C, N] regardless), {t:g} 16x16 tiles "
          "per Gaussian on average, sort buffers doubled, CUDA context and allocator slack not included "
          f"(budgeted below as {args.reserve_gb:g} GB). Sensitivity: each further 10 tiles per Gaussian adds " +
          ", ".join(f"{n * 10 * gsplat_estimate('colour' if k == 'colour' else 'feature', 24, d)['per_isect'] / GB:.2f} GB "
                    f"({label})" for k, label, d in stages) + ".\n")

    print(f"### Plan: {n / 1e6:g}M Gaussians at {full[0]}x{full[1]} on a {args.gpu_gb:g} GB GPU\n")
    persistent_nodino = sum(per_gaussian[k] for k in ("parameters (no DINO)", "Adam state (no DINO)",
                                                        "densification state", "model.info kept between steps"))
    rows = [("colour stage", persistent_nodino, "colour_peak", "colour", 0.0)]
    # the strategy's state and the last colour step's info stay allocated through the feature stage
    rows.append(("feature stage", persistent_nodino + per_gaussian["kNN table (feature stage)"],
                 "feature_peak", "feature", 0.0))
    dino_key = next((k for k in per_gaussian if k.startswith("DINO feature")), None)
    if dino_key:
        dino_pg = per_gaussian[dino_key] * 3 / 4  # its grad is in the step peak
        rows.append((f"colour stage, model with DINO {args.dino_dim} ch", persistent_nodino + dino_pg,
                     "colour_peak", "colour", 0.0))
        rows.append((f"feature stage + DINO {args.dino_dim} ch", rows[1][1] + dino_pg, "feature_dino_peak",
                     "feature_dino", 0.0))
    print("| stage | persistent: params + Adam + state (GB) | step peak, measured, projected (GB) | "
          "gsplat buffers, estimate (GB) | reserve (GB) | total (GB) | fits? | headroom (GB) |")
    print("|---|---:|---:|---:|---:|---:|---|---:|")
    totals = {}
    for label, persistent_pg, peak_key, est_key, _ in rows:
        persistent = persistent_pg * n
        step = fits[peak_key]
        total = persistent + step + estimates[est_key] + args.reserve_gb * GB
        totals[label] = total
        fits_ = "yes" if total <= budget else "NO"
        print(f"| {label} | {persistent / GB:.2f} | {step / GB:.2f} | {estimates[est_key] / GB:.2f} | "
              f"{args.reserve_gb:.1f} | {total / GB:.2f} | {fits_} | {(budget - total) / GB:.2f} |")
    largest = max(summary)
    s = summary[largest]
    images = args.plan_images
    print(f"\n### Plan: {images:,}-image mask cache at {largest[0]}x{largest[1]}\n")
    print("| where | per image (MB) | x images (GB) | note |")
    print("|---|---:|---:|---|")
    print(f"| disk: splatseg_cache (masks + DINO + CLIP + manifests) | {s['total'] / MB:.3f} | "
          f"{s['total'] * images / GB:.2f} | measured per entry |")
    ram = s["ram"]
    total = s["ram_total"]
    print(f"| RAM: cached batch as the datamanager keeps it | {total / MB:.2f} | {total * images / GB:.1f} | "
          "nerfstudio moves the cache to CPU (pinned images) above 500 images |")
    slim = total - ram["coarse_mask+fine_mask"] + ram["_masks as int16"]
    if "_dino as float16" in ram:
        slim += ram["_dino as float16"] - ram["dino (float32)"]
    if "_clip as int32 + float16" in ram:
        slim += ram["_clip as int32 + float16"] - ram["clip ids (long) + emb (float32)"]
    print(f"| RAM with DINO/CLIP also kept float16 | {slim / MB:.2f} | {slim * images / GB:.1f} | "
          "same ids (< 32768 per image), cast per step |")
    gpu500 = (ram["image uint8"] + ram["coarse_mask+fine_mask"]) * 500
    print(f"| GPU at 500 images (cache_images='gpu', the default up to 500) | "
          f"{(ram['image uint8'] + ram['coarse_mask+fine_mask']) / MB:.2f} | {gpu500 / GB:.1f} | "
          "images + masks follow the image to the GPU |")
    print(f"\n### Plan: training images cached on the GPU ({largest[0]}x{largest[1]})\n")
    print("nerfstudio caches the training images on the GPU (`cache_images='gpu'`, its default) up to 500 images "
          "and on the CPU above; splatseg's masks follow the image's device. Against the stages above:\n")
    print("| stage | masks as | GPU per image (MB) | + 500 images (GB) | total (GB) | fits? | images that fit |")
    print("|---|---|---:|---:|---:|---|---:|")
    for label, total in totals.items():
        if label.startswith("colour"):
            continue
        for dtype, masks in (("int32 (before)", ram["_masks as int32"]), ("int16 (now)", ram["_masks as int16"])):
            per_image = ram["image uint8"] + masks
            fit = int(max(0.0, budget - total) // per_image)
            print(f"| {label} | {dtype} | {per_image / MB:.2f} | {500 * per_image / GB:.1f} | "
                  f"{(total + 500 * per_image) / GB:.1f} | {'yes' if total + 500 * per_image <= budget else 'NO'} | "
                  f"{fit} |")
    print()
