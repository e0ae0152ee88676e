"""Method plugins: where they are found and how they are loaded into the method registry.

Methods come from the bundled ``dfqbench.methods`` package (the repository's ``methods/`` folder, each class
with ``@register_method``) and from other installed packages' entry points of the group ``dfqbench.methods``.
A package declares, in its ``pyproject.toml``::

    [project.entry-points."dfqbench.methods"]
    gdfq_ie = "dfqbench_gdfq_ie.method:GDFQIE"

and :func:`load_methods` registers that :class:`~dfqbench.blocks.interface.Method` subclass under the entry's name
wherever methods are looked up (the CLI, ``list methods``, grid planning, local workers, Slurm tasks).

This module sits above the methods it loads: the interface they implement is :mod:`dfqbench.blocks.interface`,
which knows nothing of this one. Importing it imports neither torch nor a plugin: listing the entries
(:func:`method_entries`) and fingerprinting them for the plan cache (:func:`entries_fingerprint`,
:mod:`dfqbench.launch.plancache`) load nothing; only :func:`load_methods` and :func:`register_entry_points` do.
:func:`method_code` stamps a loaded method's code for its run's record (:mod:`dfqbench.store.codestamp`, which
later compares the stamp with the installed code without importing anything).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import threading
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from dfqbench.errors import DfqbenchError
from dfqbench.specs.validate import check_method_name
from dfqbench.store.codestamp import code_stamp

if TYPE_CHECKING:
    from dfqbench.blocks.interface import Method
    from dfqbench.registry import Registry

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


# Where each registered method comes from: "dfqbench" (bundled) or "<distribution> <version>" (entry point).
METHOD_SOURCES: dict[str, str] = {}
# The distribution (package name) of each method registered from an entry point.
METHOD_DISTRIBUTIONS: dict[str, str] = {}
# One line per installed plugin that could not be registered (also printed once to stderr as a warning).
PLUGIN_PROBLEMS: list[str] = []
_entry_points_loaded = False


def load_methods() -> Registry[type[Method]]:
    """The registry with every method: the bundled plugins (``dfqbench.methods``, the repository's
    ``methods/`` folder) and, once per process, those of other installed packages' ``dfqbench.methods``
    entry points (:func:`register_entry_points`)."""
    import dfqbench.methods  # noqa: F401  (registers on import)
    from dfqbench.blocks.interface import METHODS

    for name in METHODS.names():
        METHOD_SOURCES.setdefault(name, "dfqbench")
    global _entry_points_loaded
    if not _entry_points_loaded:
        _entry_points_loaded = True
        for problem in register_entry_points():
            PLUGIN_PROBLEMS.append(problem)
            print(f"dfqbench: warning: {problem}", file=sys.stderr)
        for name in METHODS.names():  # the loaded code's stamps, before anything can edit it
            method_code(METHODS.get(name))
    return METHODS


def register_entry_points() -> list[str]:
    """Register each installed ``dfqbench.methods`` entry point ``name = "package.module:Class"`` under
    ``name``; returns one line per entry that was not registered, naming its distribution and why.

    The rules: the class must be a :class:`Method` subclass; a class that does not set ``name`` itself
    (e.g. a subclass of a bundled method) is given the entry's name; one that sets a different ``name`` is
    refused (the name is part of every run's spec and folder, so the two must agree); a name already taken
    by a bundled method or by another distribution's entry is refused (a plugin never replaces a method).
    A plugin that fails to import is reported and skipped; the other methods keep working.
    """
    from dfqbench.blocks.interface import METHODS, Method

    problems = []
    for entry in method_entries():
        where = f"method plugin {entry.name!r} = {entry.value!r} (distribution {entry.distribution})"
        try:
            check_method_name(entry.name)  # before importing anything of the plugin
        except DfqbenchError as exc:
            problems.append(f"{where} not loaded: {exc}")
            continue
        try:
            with _sigint_watch() as ctrl_c:
                cls = entry.entry_point.load()
        except (Exception, SystemExit, KeyboardInterrupt) as exc:  # noqa: BLE001  (report it and carry on)
            if ctrl_c() and isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise  # the user's Ctrl-C (or dfqbench's own handler of it), not the plugin's doing
            problems.append(f"{where} not loaded: {type(exc).__name__}: {_first_line(exc)}")
            continue
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            problems.append(f"{where} not loaded: {cls!r} is not a subclass of dfqbench.blocks.interface.Method")
            continue
        own = cls.__dict__.get("name")
        if own is not None and own != entry.name:
            problems.append(f"{where} not loaded: the class sets name = {own!r}; the entry point's name and the "
                            "class's `name` must be equal (or leave `name` unset)")
            continue
        if entry.name in METHODS and METHODS.get(entry.name) is not cls:
            taken = METHOD_SOURCES.get(entry.name, "another plugin")
            what = "a bundled method" if taken == "dfqbench" else f"already registered by {taken}"
            problems.append(f"{where} not loaded: {entry.name!r} is {what}; a plugin cannot replace it "
                            "(rename the entry point)")
            continue
        if own is None:
            cls.name = entry.name
        METHODS.add(entry.name, cls)
        METHOD_SOURCES.setdefault(entry.name, entry.distribution)
        dist = getattr(entry.entry_point, "dist", None)
        if dist is not None:
            METHOD_DISTRIBUTIONS.setdefault(entry.name, dist.metadata["Name"])
    return problems


def method_modules(method_cls: type[Method]) -> list[str]:
    """The modules holding a method's code: its class's and those of its base classes that are methods (a plugin
    subclassing GDFQ: its own module, then ``dfqbench.methods.gdfq``); the interface itself is not one."""
    from dfqbench.blocks.interface import Method

    return list(dict.fromkeys(c.__module__ for c in method_cls.__mro__
                              if isinstance(c, type) and issubclass(c, Method) and c is not Method))


# The stamp of each method class's code as it was when the class was loaded (what this process runs).
_LOADED_CODE: dict[type, dict[str, Any]] = {}


def method_code(method_cls: type[Method]) -> dict[str, Any]:
    """The stamp of the code that computes ``method_cls``'s runs (:func:`dfqbench.store.codestamp.code_stamp`):
    the source of :func:`method_modules` and, for a plugin, its distribution's name and version, as they were
    when the class was loaded (:func:`load_methods` stamps every method it registers), so that a file edited
    after the import does not stamp runs that the imported code computes (:func:`code_changed_since_loaded`)."""
    if method_cls not in _LOADED_CODE:
        _LOADED_CODE[method_cls] = code_stamp(method_modules(method_cls),
                                              METHOD_DISTRIBUTIONS.get(getattr(method_cls, "name", "")))
    return _LOADED_CODE[method_cls]


def code_changed_since_loaded(method_cls: type[Method]) -> bool:
    """Whether ``method_cls``'s files changed on disk after this process loaded them (a long-lived process, e.g.
    a notebook, still runs the loaded code: restart it to run the edited one)."""
    loaded = method_code(method_cls)
    now = code_stamp(list(loaded["modules"]), loaded["distribution"])
    return now["digest"] != loaded["digest"]


@contextlib.contextmanager
def _sigint_watch() -> Iterator[Callable[[], bool]]:
    """Inside the block, a real SIGINT (Ctrl-C) still raises KeyboardInterrupt and is remembered; the callable
    says whether one came. A plugin that raises KeyboardInterrupt (or calls ``sys.exit``) while it is imported
    is then a broken plugin, reported like any other, while the user's Ctrl-C still stops dfqbench. Outside the
    main thread signals cannot be watched: every KeyboardInterrupt counts as the user's there."""
    received = [False]
    if threading.current_thread() is not threading.main_thread():
        yield lambda: True
        return
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        if previous == signal.SIG_IGN:
            return
        received[0] = True
        if callable(previous):
            previous(signum, frame)  # e.g. dfqbench's own handler, or Python's (raises KeyboardInterrupt)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield lambda: received[0]
    finally:
        signal.signal(signal.SIGINT, previous)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "(no message)"
