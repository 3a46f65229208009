"""The module paths of the flat layout jaxicl had before its subpackages, still importable.

`import jaxicl.icl` or `from jaxicl.experiment import RunConfig` resolves to the module's new
home (the same module object, so classes and functions are identical) with a DeprecationWarning
naming it. `jaxicl.finetune` and `jaxicl.transforms` are public names, not deprecated.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

NEW_HOMES = {
    "jaxicl.icl": "jaxicl.engine.scoring",
    "jaxicl.metrics": "jaxicl.engine.metrics",
    "jaxicl.batch_size": "jaxicl.engine.batch_size",
    "jaxicl.experiment": "jaxicl.runner",
    "jaxicl.revisions": "jaxicl.runner.checkpoints",
    "jaxicl.tune": "jaxicl.runner.tune",
    "jaxicl.evaluation": "jaxicl.runner.evaluation",
    "jaxicl.controls": "jaxicl.analyses.controls",
    "jaxicl.order": "jaxicl.analyses.order",
    "jaxicl.distributed": "jaxicl.runtime.distributed",
    "jaxicl.sharding": "jaxicl.runtime.sharding",
    "jaxicl.compile_cache": "jaxicl.runtime.compile_cache",
    "jaxicl.compile_stats": "jaxicl.runtime.compile_stats",
    "jaxicl.stage_clock": "jaxicl.runtime.stage_clock",
}
PUBLIC = {"jaxicl.finetune": "jaxicl.engine.finetune", "jaxicl.transforms": "jaxicl.engine.transforms"}


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads it as the module at its new home."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in NEW_HOMES or fullname in PUBLIC:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        if spec.name in NEW_HOMES:
            warnings.warn(f"{spec.name} moved to {NEW_HOMES[spec.name]}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(NEW_HOMES.get(spec.name) or PUBLIC[spec.name])

    def exec_module(self, module):
        pass  # the module at the new home is already executed


def install() -> None:
    """Put the alias finder on `sys.meta_path` once."""
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
