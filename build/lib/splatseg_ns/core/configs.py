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
