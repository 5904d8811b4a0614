"""Timing on one device: the median of many calls with warm-up and a budget, torch's threads, what the
machine is (device name, load average)."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Tuple

import torch


@contextlib.contextmanager
def torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Run with `threads` torch CPU threads (None: unchanged), restoring the setting after."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class Timer:
    """Median wall time of a callable on one device, with warm-up and a time budget."""

    def __init__(self, device: torch.device, repeats: int, budget_s: float, min_repeats: int = 5):
        self.device, self.repeats, self.budget_s, self.min_repeats = device, repeats, budget_s, min_repeats
        self.last_count = 0

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def once(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def median_s(self, fn: Callable[[], object], warmup: int = 3, min_repeats: Optional[int] = None) -> float:
        for _ in range(warmup):
            self.once(fn)
        floor = self.min_repeats if min_repeats is None else min_repeats
        times: List[float] = []
        while len(times) < max(self.repeats, floor):
            times.append(self.once(fn))
            if len(times) >= floor and sum(times) > self.budget_s:
                break
        self.last_count = len(times)
        return statistics.median(times)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} CPUs"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"


def load_average() -> Tuple[float, float, float]:
    try:
        return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
    except (AttributeError, OSError):  # not on every platform
        return (math.nan, math.nan, math.nan)
