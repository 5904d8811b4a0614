"""Let torch>=2.6 load nerfstudio checkpoints without turning off its safety checks.

nerfstudio 1.1.5 saves learning-rate scheduler state that holds numpy scalars. Since torch 2.6,
`torch.load` defaults to `weights_only=True` and refuses those, so `ns-viewer`, `ns-export` and
resuming fail for every run (nerfstudio issue 3683). Allow-listing exactly the numpy scalar
and dtype types keeps `weights_only` on for everything else.
"""

from __future__ import annotations


def allow_numpy_scalars_in_checkpoints() -> None:
    """Register numpy scalar reconstruction as safe for `torch.load(weights_only=True)`."""
    import numpy as np
    import torch

    add_safe_globals = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe_globals is None:  # torch < 2.4 loads these anyway
        return
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2
    except ImportError:
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    dtype_classes = [getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType")]
    add_safe_globals([scalar, np.dtype, *dtype_classes])
