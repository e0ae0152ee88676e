"""The code stamp of a run: a digest of the method code that computed it, and whether that code is still installed.

A finished run's ``record.json`` holds ``code``::

    {"digest": "…", "modules": {"dfqbench_gdfq_ie.method": "…", "dfqbench.methods.gdfq": "…"},
     "distribution": "dfqbench-gdfq-ie", "version": "0.1.0"}

``modules`` are the method class's module and those of its base classes that are methods (a plugin subclassing
GDFQ includes ``dfqbench.methods.gdfq``), each with the sha256 of its source file (in any order: the record
is written with sorted keys, and the digest hashes them sorted too); ``distribution`` and
``version`` name the installed package that declares a plugin's entry point (null for bundled methods, whose
code is the module source). ``digest`` hashes all of it (null when a module's source could not be read).

:func:`code_state` recomputes the digest of the recorded modules as they are installed *now*, without
importing them (their files are found through the import system's finders, the parent packages never run),
and compares: ``current``, ``stale`` (the code changed since the run: the run's numbers may not be what the
installed code gives) or ``unknown`` (a record from before stamps existed, or code that can no longer be
found). The stamp is not part of the run id (docs/results-and-reports.md, "Stale results"): the run id says
what was asked; the stamp says which code answered.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

CODE_STATES = ("current", "stale", "unknown")
_SOURCE_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: a file read once per edit


def module_origin(name: str) -> Path | None:
    """The file module ``name`` is loaded from, found without importing it or its parent packages (each level
    is looked up by the finders of ``sys.meta_path`` in the parent's search locations); None if not found."""
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: nothing is imported
    except (ImportError, ValueError):
        return None
    for depth in range(2, len(parts) + 1):
        if spec is None or not spec.submodule_search_locations:
            return None
        spec = _find_spec(".".join(parts[:depth]), list(spec.submodule_search_locations))
    if spec is None or not spec.has_location or not spec.origin:
        return None
    return Path(spec.origin)


def _find_spec(fullname: str, path: list[str]) -> Any:
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        if find is None:
            continue
        try:
            spec = find(fullname, path)
        except (ImportError, ValueError, AttributeError):
            continue
        if spec is not None:
            return spec
    return None


def source_hash(name: str) -> str | None:
    """sha256 of module ``name``'s source file as installed now, or None when it cannot be found or read."""
    origin = module_origin(name)
    if origin is None:
        return None
    try:
        info = os.stat(origin)
        key = (str(origin), info.st_size, info.st_mtime_ns)
        if key not in _SOURCE_HASHES:
            _SOURCE_HASHES[key] = hashlib.sha256(origin.read_bytes()).hexdigest()
        return _SOURCE_HASHES[key]
    except OSError:
        return None


def distribution_version(name: str | None) -> str | None:
    try:
        return metadata.version(name) if name else None
    except metadata.PackageNotFoundError:
        return None


def code_stamp(modules: Iterable[str], distribution: str | None = None) -> dict[str, Any]:
    """The stamp of ``modules`` (in order, each once) and of the installed ``distribution`` (a plugin's package
    name; None for bundled methods), as a record holds it."""
    hashes = {name: source_hash(name) for name in dict.fromkeys(modules)}
    version = distribution_version(distribution)
    complete = bool(hashes) and all(hashes.values()) and (distribution is None or version is not None)
    body = {"modules": hashes, "distribution": distribution, "version": version}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16] if complete else None
    return {"digest": digest, **body}


@dataclass(frozen=True)
class CodeState:
    """``state``: current, stale or unknown; ``reason``: why (which module changed, or why it is unknown)."""

    state: str
    reason: str | None = None

    @property
    def stale(self) -> bool:
        return self.state == "stale"


def code_state(recorded: Any) -> CodeState:
    """Whether the code a record's ``code`` stamp names is still what is installed (see the module docstring)."""
    if not isinstance(recorded, dict) or not recorded.get("digest") or not isinstance(recorded.get("modules"), dict):
        return CodeState("unknown", "no code digest recorded (a run from before dfqbench recorded one)")
    modules = [str(m) for m in recorded["modules"]]
    distribution = recorded.get("distribution")
    now = code_stamp(modules, distribution if isinstance(distribution, str) else None)
    if now["digest"] is None:
        missing = [m for m, h in now["modules"].items() if h is None]
        what = f"module {missing[0]}" if missing else f"distribution {distribution}"
        return CodeState("unknown", f"{what} is not installed here: its code cannot be compared")
    if now["digest"] == recorded["digest"]:
        return CodeState("current")
    changed = [m for m, h in now["modules"].items() if recorded["modules"].get(m) != h]
    parts = [f"{', '.join(changed)} changed"] if changed else []
    if recorded.get("version") != now["version"]:
        parts.append(f"{distribution} {recorded.get('version')} -> {now['version']}")
    return CodeState("stale", ("; ".join(parts) or "the method's code changed") + " since the run")
