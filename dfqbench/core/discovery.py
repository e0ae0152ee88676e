"""Method plugins in other installed packages, found through the ``dfqbench.methods`` entry-point group.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."dfqbench.methods"]
    gdfq_ie = "dfqbench_gdfq_ie.method:GDFQIE"

and dfqbench registers that :class:`~dfqbench.core.plugin.Method` subclass under the entry's name wherever
it looks methods up (:func:`dfqbench.core.plugin.load_methods`: the CLI, ``list methods``, grid planning,
local workers, Slurm tasks). This module only lists the entries and never imports them (nor torch): the
plan cache (:mod:`dfqbench.launch.plancache`) fingerprints them without loading a plugin.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

GROUP = "dfqbench.methods"


@dataclass(frozen=True)
class MethodEntry:
    """One ``dfqbench.methods`` entry point and the distribution that declares it."""

    name: str
    value: str  # "package.module:Class"
    distribution: str  # "name version", or "?" when the entry point does not say
    entry_point: metadata.EntryPoint

    @property
    def module(self) -> str:
        return self.value.split(":", 1)[0].strip()


def _distribution(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "?"
    return f"{dist.metadata['Name']} {dist.version}"


def method_entries() -> list[MethodEntry]:
    """Every installed ``dfqbench.methods`` entry point, sorted by name then distribution (a stable order)."""
    found = [MethodEntry(ep.name, ep.value, _distribution(ep), ep) for ep in metadata.entry_points(group=GROUP)]
    return sorted(found, key=lambda e: (e.name, e.distribution, e.value))


def _source_files(module: str) -> list[Any]:
    """Size and modification time of the ``.py`` files of ``module``'s top-level package, found without
    importing it (``find_spec`` of a top-level name imports nothing)."""
    try:
        spec = importlib.util.find_spec(module.split(".", 1)[0])
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] or ([Path(spec.origin)] if spec.origin else [])
    files: list[Any] = []
    for root in roots:
        if root.is_file():
            files.append([str(root), _stat(root)])
            continue
        for dirpath, dirnames, names in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            files += [[os.path.join(dirpath, n), _stat(os.path.join(dirpath, n))] for n in sorted(names)
                      if n.endswith(".py")]
    return files


def _stat(path: str | Path) -> list[int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns]


def entries_fingerprint() -> list[Any]:
    """What the installed plugins contribute to a cache key: each entry, its distribution and its code files."""
    return [[e.name, e.value, e.distribution, _source_files(e.module)] for e in method_entries()]
