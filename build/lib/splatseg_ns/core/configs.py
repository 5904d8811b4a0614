"""Config dataclasses that still load when an older splatseg wrote them.

nerfstudio stores a run's config as YAML of the config objects (`config.yml`) and loads it back
with `yaml.Loader`, which restores an object's attributes without calling its constructor: a
field added since the run was trained would be missing. `LoadsOlderConfigs` gives such fields
their defaults when the object is restored.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict


class LoadsOlderConfigs:
    """Mixin for config dataclasses: fields missing from a restored state take their defaults."""

    def __setstate__(self, state: Dict[str, Any]) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            if field.name in state:
                continue
            if field.default is not dataclasses.MISSING:
                state[field.name] = field.default
            elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                state[field.name] = field.default_factory()  # type: ignore[misc]
        self.__dict__.update(state)


RUN_CONFIG_MODULES = ("nerfstudio.", "splatseg_ns.", "pathlib.", "torch.optim.", "gsplat.")
"""Where the classes of a run's config.yml come from (nerfstudio's configs, splatseg's, paths, optimisers)."""


def run_config_loader():
    """A YAML loader for nerfstudio run configs that constructs only classes of `RUN_CONFIG_MODULES`.

    nerfstudio writes config.yml with Python tags and reads it with `yaml.Loader`, which would also run
    `!!python/object/apply:os.system [...]` from a file someone sent you. This loader refuses any tag that
    names a function, a module, or a class from elsewhere, naming the tag, before anything is constructed.
    """
    import yaml

    class RunConfigLoader(yaml.Loader):
        def find_python_name(self, name, mark, *args):
            if not name.startswith(RUN_CONFIG_MODULES):
                raise yaml.constructor.ConstructorError(
                    None, None, f"refused tag naming {name!r}: a run config holds only nerfstudio's and splatseg's "
                    "classes", mark)
            found = super().find_python_name(name, mark, *args)
            if not isinstance(found, type):
                raise yaml.constructor.ConstructorError(
                    None, None, f"refused tag naming {name!r}: not a class (a run config calls no function)", mark)
            return found

        def find_python_module(self, name, mark, *args):
            raise yaml.constructor.ConstructorError(None, None, f"refused tag naming module {name!r}", mark)

    return RunConfigLoader


def load_run_config(text: str):
    """A run config's objects from config.yml's text, through `run_config_loader` (yaml errors propagate)."""
    import yaml

    return yaml.load(text, Loader=run_config_loader())
