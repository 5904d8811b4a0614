"""Counting bytes: tensors' storages, a dispatch mode's peak, the process's max RSS."""

from __future__ import annotations

import resource
import weakref
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

MB = 1e6
GB = 1e9


def tensor_bytes(tensors: Iterable[Optional[torch.Tensor]]) -> int:
    """Bytes of the distinct storages behind `tensors` (a view or an expand counts its storage once)."""
    seen: Dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class PeakMemory(TorchDispatchMode):
    """Peak bytes of the tensor storages created while active, freed ones subtracted (any device).

    Every op's outputs whose storage is not one of its inputs' (views and in-place results share
    theirs) are added when created and subtracted by a weak-reference callback when freed, so
    `peak` is the high-water mark of memory allocated inside the block above what existed before.
    Autograd's backward runs through the mode too (gradients, saved-tensor unpacking).

    With `num_gaussians`, a storage whose tensor has N rows ([N, ...] or [1, N, ...]) counts as
    per-Gaussian and the rest as per-image; `projected_peak[M]` is then the high-water mark of the
    same timeline with every per-Gaussian storage scaled to M Gaussians. (The peak of a step is a
    maximum over time, of per-pixel temporaries early and per-Gaussian gradients late, so a line
    through two measured peaks would not extrapolate; the scaled timeline does.)
    """

    def __init__(self, num_gaussians: Optional[int] = None, project_to: Sequence[float] = ()):
        super().__init__()
        self.live: Dict[int, Tuple[int, bool, weakref.ref]] = {}
        self.n = num_gaussians
        self.current = 0
        self.peak = 0
        self.per_gaussian = 0  # bytes of live per-Gaussian storages
        self.per_gaussian_at_end = 0
        self.projected_peak = {m: 0.0 for m in project_to}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(t.untyped_storage()) for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                size = storage.nbytes()
                if key in inputs or key in self.live or size == 0:
                    continue
                shape = tuple(t.shape)
                gaussian = self.n is not None and len(shape) >= 1 and (
                    shape[0] == self.n or (len(shape) >= 2 and shape[0] == 1 and shape[1] == self.n))
                self.live[key] = (size, gaussian, weakref.ref(storage, lambda _, k=key: self._free(k)))
                self.current += size
                self.per_gaussian += size if gaussian else 0
                self.peak = max(self.peak, self.current)
                other = self.current - self.per_gaussian
                for m in self.projected_peak:
                    self.projected_peak[m] = max(self.projected_peak[m], other + self.per_gaussian * m / self.n)
        return out

    def _free(self, key: int) -> None:
        size, gaussian, _ = self.live.pop(key, (0, False, None))
        self.current -= size
        self.per_gaussian -= size if gaussian else 0


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
