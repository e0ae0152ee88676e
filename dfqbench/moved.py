"""Old module paths of this release's layout change, served for one release with a DeprecationWarning.

The method interface and the method building blocks left ``dfqbench.core`` (now the trainer machinery
only) for ``dfqbench.blocks``; the run-specification modules moved into ``dfqbench.specs``; the grid index
joined the store that owns the results layout. Plugin packages and Slurm jobs pickled before the change
name the old paths: a finder on ``sys.meta_path`` (installed by ``import dfqbench``) answers an old name with
the module at its new path, the same module object, so classes pickled under the old path load as the new
ones.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

_BLOCKS = ("features", "generators", "generators_qimera", "hooks", "losses", "game_losses", "superposed",
           "distill")

MOVED_MODULES: dict[str, str] = {
    "dfqbench.core.plugin": "dfqbench.blocks.interface",
    **{f"dfqbench.core.{name}": f"dfqbench.blocks.{name}" for name in _BLOCKS},
    "dfqbench.configuration": "dfqbench.specs.configuration",
    "dfqbench.protocols": "dfqbench.specs.protocols",
    "dfqbench.validate": "dfqbench.specs.validate",
    "dfqbench.grid_index": "dfqbench.store.grid_index",
}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the module at its new path (imported if need be), warning once per import."""

    def __init__(self, new_name: str) -> None:
        self.new_name = new_name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        warnings.warn(f"{spec.name} moved to {self.new_name}; the old path goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(self.new_name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module at the new path is already executed."""


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MOVED_MODULES` (and nothing else)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        new_name = MOVED_MODULES.get(fullname)
        if new_name is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new_name))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
