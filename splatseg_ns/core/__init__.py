"""The method itself, in plain torch/numpy: nothing here imports nerfstudio.

Grouped by the method's stages, each room importing only from the rooms before it:
- the foundation (this folder): `features` (the two-level feature), `configs`, `files`, `pca`;
- `io`: the file formats (images, PLY, checkpoints, selection files);
- `render`: the pure-torch rasteriser, the Gaussians behind a pixel, what the viewer displays;
- `segment`: training the features (losses, GFL's candidates, the schedule), the votes, the labels
  and selections, the metrics;
- `extract`: the per-image masks and features (SAM, DINO, CLIP), their cache, serial or on Ray;
- `export`: an object's Gaussians cleaned and written as a 3DGS PLY.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

FORMER_MODULES = {
    f"splatseg_ns.core.{name}": f"splatseg_ns.core.{room}.{name}"
    for room, names in {"extract": ("sam_masks", "dino_features", "clip_embeddings"),
                        "segment": ("global_candidates", "lifting")}.items()
    for name in names
}
"""Where the config classes that runs' config.yml files name by module path used to live (before the rooms).
nerfstudio loads config.yml by those paths, so they stay importable: the same classes, under the old names."""


class _FormerModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves a former module path to a module that holds the moved module's objects (no second copy)."""

    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self) if name in FORMER_MODULES else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__dict__.update({k: v for k, v in vars(importlib.import_module(FORMER_MODULES[module.__name__])).items()
                                if not k.startswith("__")})


if not any(isinstance(finder, _FormerModules) for finder in sys.meta_path):
    sys.meta_path.append(_FormerModules())
