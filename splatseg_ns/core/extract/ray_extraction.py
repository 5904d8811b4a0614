"""Filling the cache on a Ray cluster: a pool of workers (Ray actors), one per GPU, or per N CPUs without one.

`extraction.extract_all(..., runner=ray_runner(RayOptions(...)))` comes here after what is done once (the dataset check,
the DINO PCA fit, the shard). This process, the driver, plans each image (`extraction.plan_image`: entries
already valid are not sent), reads it, streams it to the workers in name order and writes what comes back
with the cache's own atomic writes and manifests (`extraction.store_product`): the workers need no shared
file system, and each loads its models once (the extractors travel to each worker once, as pickles).

- A worker that dies (its node lost, out of memory) is replaced and its images go back to the queue, at
  most `max_retries` times per image; an image that still fails is reported with the bad input files.
- An image whose file is bad is reported by name at the end, with every other, after the rest are stored.
- Ctrl-C stops the workers; every entry written is valid (atomic writes), a rerun computes the rest.

Ray is an optional extra (`pip install 'splatseg[ray]'`), imported only here.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Deque, Dict, List, Optional, Sequence, Tuple

from splatseg_ns.core.extract.cache import FeatureCache
from splatseg_ns.core.extract.extraction import (
    BAD_INPUT_ERRORS,
    ExtractionSummary,
    ImageJob,
    Runner,
    compute_products,
    plan_image,
    store_product,
)
from splatseg_ns.core.extract.extractors import Extractor
from splatseg_ns.core.io.images import load_image

INSTALL_HINT = "pip install 'splatseg[ray]' (or pip install 'ray>=2.9')"


class RaySetupError(RuntimeError):
    """Ray is missing, its cluster cannot be reached, or the cluster cannot hold one worker."""


class WorkerLostError(RuntimeError):
    """An image whose workers kept dying (`max_retries` times): reported with the bad input files."""


@dataclass
class RayOptions:
    """Where and how wide to run the extraction on Ray.

    Args:
        address: "auto": the cluster this machine is part of (`ray start`, or RAY_ADDRESS), else a local
            instance started for this run; "local": always a local instance; else a cluster's address
            (host:port, or ray://host:port for Ray Client).
        cpus_per_worker: CPUs per worker when the cluster has no GPU (with GPUs: one GPU per worker).
        workers: at most this many workers (default: as many as the cluster's resources hold).
        max_retries: times an image is sent again after its worker died while computing it alone (an image
            in flight beside others when its worker dies is sent again alone, uncounted).
        in_flight: images queued per worker, so that sending one overlaps computing another.
    """

    address: str = "auto"
    cpus_per_worker: float = 1.0
    workers: Optional[int] = None
    max_retries: int = 3
    in_flight: int = 2


def import_ray():
    try:
        import ray
    except ImportError as err:
        raise RaySetupError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}.") from err
    return ray


def connect(ray, address: str) -> bool:
    """Join the cluster (or start a local instance); True when this call started it (and must stop it)."""
    if ray.is_initialized():
        return False
    quiet = dict(logging_level="ERROR", log_to_driver=False, include_dashboard=False)
    if address in ("auto", "local"):
        if address == "auto":
            try:
                ray.init(address="auto", logging_level="ERROR", log_to_driver=False)
                return True
            except (ConnectionError, RuntimeError, ValueError):
                pass  # no cluster here: start one for this run
        ray.init(**quiet)
        return True
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
    except Exception as err:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, grpc errors...
        raise RaySetupError(f"--ray {address}: cannot reach a Ray cluster there ({type(err).__name__}: {err}). "
                            "Check the address `ray start --head` printed, or use --ray auto.") from err
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A quick TCP probe of host:port: ray.init retries an unreachable address for minutes."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdecimal():
        raise RaySetupError(f"--ray {address}: give auto, local, or the cluster's address as host:port "
                            "(ray://host:port for Ray Client)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise RaySetupError(f"--ray {address}: cannot reach a Ray cluster there ({err}). Check the address "
                            "`ray start --head` printed, or use --ray auto.") from err


def worker_plan(resources: Dict[str, float], options: RayOptions) -> Tuple[int, Dict[str, float]]:
    """How many workers the cluster holds, and what each asks for: one GPU each, else `cpus_per_worker` CPUs."""
    gpus, cpus = int(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    if gpus >= 1:
        count, each = gpus, {"num_gpus": 1, "num_cpus": 1}
    else:
        count, each = int(cpus // options.cpus_per_worker), {"num_gpus": 0, "num_cpus": options.cpus_per_worker}
    if options.workers is not None:
        count = min(count, options.workers)
    if count < 1:
        raise RaySetupError(f"The Ray cluster has {cpus:g} CPUs and no GPU: not enough for one worker of "
                            f"{options.cpus_per_worker:g} CPUs; lower --ray-cpus-per-worker or add nodes.")
    return count, each


class _Worker:
    """A Ray actor's body: the extractors (their models load on first use, once per worker)."""

    def __init__(self, extractors: Sequence[Extractor]):
        self.by_product = {e.product: e for e in extractors}

    def compute(self, image_path: str, products: Sequence[str], image, cached) -> Dict[str, Dict]:
        job = ImageJob(Path(image_path), [self.by_product[p] for p in products], {}, cached)
        return {extractor.product: arrays for extractor, arrays in compute_products(job, image)}

    def ready(self) -> bool:
        return True


def ray_runner(options: RayOptions) -> Runner:
    """An `extract_all` runner that computes the images' missing entries on Ray workers and stores them here."""
    ray = import_ray()  # before any image is looked at: a missing extra is one line up front

    def run(cache: FeatureCache, images: Sequence[Path], ordered: Sequence[Extractor], summary: ExtractionSummary,
            progress: bool) -> List[Exception]:
        started = connect(ray, options.address)
        try:
            count, each = worker_plan(ray.cluster_resources(), options)
            return _Pool(ray, count, each, ordered).run(cache, images, ordered, options, summary, progress)
        finally:
            if started:
                ray.shutdown()

    return run


class _Pool:
    """The workers, each slot refilled when its worker dies, and the images in flight on each."""

    def __init__(self, ray, count: int, resources: Dict[str, float], ordered: Sequence[Extractor]):
        self.ray = ray
        self.remote = ray.remote(max_restarts=0, max_task_retries=0, **resources)(_Worker)
        self.extractors = ray.put(list(ordered))  # sent once; each worker unpickles its own copy
        self.actors = [self.remote.remote(self.extractors) for _ in range(count)]
        self.done = [0] * count
        self.since = [time.perf_counter()] * count

    def replace(self, slot: int, actor) -> None:
        if self.actors[slot] is actor:  # only once per death, though all its images report it
            self.actors[slot] = self.remote.remote(self.extractors)
            self.since[slot], self.done[slot] = time.perf_counter(), 0

    def stop(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)

    def run(self, cache: FeatureCache, images: Sequence[Path], ordered: Sequence[Extractor], options: RayOptions,
            summary: ExtractionSummary, progress: bool) -> List[Exception]:
        from tqdm.auto import tqdm

        ray = self.ray
        summary.workers = len(self.actors)
        fresh: Deque[Path] = deque(images)
        retry: Deque[Tuple[ImageJob, object, int]] = deque()  # (job, image, deaths it was alone for)
        in_flight: Dict[object, tuple] = {}  # ref -> (slot, actor, job, image, tries, sent alone)
        failed: List[Exception] = []
        bar = tqdm(total=len(images), desc=f"splatseg {'+'.join(e.product for e in ordered)} [ray, "
                   f"{len(self.actors)} workers]", unit="img", disable=not progress)

        def next_fresh() -> Optional[Tuple[ImageJob, object, int]]:
            while fresh:
                path = fresh.popleft()
                try:
                    job = plan_image(cache, path, ordered, summary)
                    if not job.todo:
                        bar.update()
                        continue
                    return job, load_image(path), 0
                except BAD_INPUT_ERRORS as err:
                    failed.append(err)
                    bar.update()
            return None

        def submit(slot: int, work: Tuple[ImageJob, object, int], alone: bool) -> None:
            job, image, tries = work
            actor = self.actors[slot]
            ref = actor.compute.remote(str(job.image_path), [e.product for e in job.todo], image, job.cached)
            in_flight[ref] = (slot, actor, job, image, tries, alone)

        try:
            while True:
                for slot in range(len(self.actors)):
                    mine = [entry for entry in in_flight.values() if entry[0] == slot]
                    if any(entry[5] for entry in mine):
                        continue  # a retried image runs alone: if the worker dies again, it is to blame
                    if retry and not mine:
                        submit(slot, retry.popleft(), alone=True)
                        continue
                    for _ in range(options.in_flight - len(mine)):
                        work = None if retry else next_fresh()
                        if work is None:
                            break
                        submit(slot, work, alone=False)
                if not in_flight:
                    break
                (ref,), _ = ray.wait(list(in_flight), num_returns=1)
                slot, actor, job, image, tries, alone = in_flight.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayActorError:  # the worker died: a new one takes its slot
                    self.replace(slot, actor)
                    tries += alone  # with other images in flight, which one killed it is unknown: retry alone
                    if tries > options.max_retries:
                        failed.append(WorkerLostError(f"{job.image_path}: its worker died {tries} times "
                                                      "(out of memory, or a node lost?); rerun to try again."))
                        bar.update()
                    else:
                        retry.append((job, image, tries))
                    continue
                except ray.exceptions.RayTaskError as err:
                    cause = err.cause if isinstance(getattr(err, "cause", None), BaseException) else err
                    if not isinstance(cause, BAD_INPUT_ERRORS):
                        raise cause from None
                    failed.append(cause)
                    bar.update()
                    continue
                for extractor in job.todo:
                    store_product(cache, job, extractor, results[extractor.product], image.shape[:2], summary)
                summary.images_computed += 1
                self.done[slot] += 1
                now = time.perf_counter()
                bar.set_postfix({f"w{k}": f"{n / max(now - t, 1e-9):.2f}/s"
                                 for k, (n, t) in enumerate(zip(self.done, self.since))}, refresh=False)
                bar.update()
        finally:  # also on Ctrl-C: what is stored stays valid, the workers stop
            bar.close()
            self.stop()
        return failed
