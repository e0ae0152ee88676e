"""The plan cache: what planning decided per cell, so that `--dry-run` and `status` answer without torch.

A full plan (:func:`dfqbench.launch.plan.plan_grid`) imports torch, every method plugin and pytorchcv,
which takes seconds before the first cell is looked at. Its per-cell decisions (excluded, unsupported or
invalid with the reason, or the run's name, id, train settings and Q steps per iteration) depend only on
the cell, the launch options, the code and a few files, so they are kept in ``<cache>/<fingerprint>.json``.
The fingerprint hashes

* the size and modification time of every ``.py`` file of the dfqbench package and of its methods folder,
  and the installed versions of dfqbench, torch and pytorchcv;
* the installed method plugins (``dfqbench.methods`` entry points): each entry, its distribution and version,
  and the size and time of the ``.py`` files of its top-level package (found without importing it);
* every ``DFQBENCH_*`` environment variable, the home folder (pytorchcv downloads under it) and the launch
  options that reach a run spec (weights, weights folder, weights normalisation, protocol, overrides);
* the size and time of the weights files and the listing of the weights folders those name.

Inside a file, each model's dataset and teacher weights file (its size and time, or its absence: a pytorchcv
teacher not downloaded yet) are checked again at every use. A dry run whose cells are all found answers from
the cache (run states are always read from the results store, never cached); any miss plans in full and
adds to the cache. Launches always plan in full. ``DFQBENCH_PLAN_CACHE=DIR`` moves the cache (default
``$DFQBENCH_CACHE/plans``, else ``$XDG_CACHE_HOME/dfqbench/plans``, else ``~/.cache/dfqbench/plans``); ``DFQBENCH_PLAN_CACHE=off`` turns it off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

from dfqbench.launch.grid import Cell, Grid
from dfqbench.launch.plan import Decision, LaunchOptions, Plan, assemble, plan_grid, select_cells
from dfqbench.plugins import entries_fingerprint
from dfqbench.store import atomic_write_bytes
from dfqbench.store.files import parse_json

PACKAGE = Path(__file__).resolve().parents[1]  # the dfqbench package folder (from this file: no `import dfqbench`)

CACHE_ENV = "DFQBENCH_PLAN_CACHE"
SCHEMA = 1
KEEP_FILES = 16


def cache_dir() -> Path | None:
    """Where cache files live, or None when the cache is off."""
    text = os.environ.get(CACHE_ENV, "")
    if text.lower() in ("off", "0", "no", "false"):
        return None
    if text:
        return Path(text).expanduser()
    if os.environ.get("DFQBENCH_CACHE"):  # dfqbench's cache folder (decoded test sets), when the user moved it
        return Path(os.environ["DFQBENCH_CACHE"]).expanduser() / "plans"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path("~", ".cache").expanduser())
    return Path(base) / "dfqbench" / "plans"


def _stat(path: str | Path | None) -> list[int] | None:
    try:
        info = os.stat(path) if path else None
    except OSError:
        return None
    return None if info is None else [info.st_size, info.st_mtime_ns]


def _listing(folder: str | None) -> list[Any]:
    try:
        return sorted([e.name, _stat(e.path)] for e in os.scandir(folder)) if folder else []
    except OSError:
        return []


def _code_files() -> list[Any]:
    roots = [PACKAGE]
    spec = importlib.util.find_spec("dfqbench.methods")
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(p).resolve() for p in spec.submodule_search_locations]
    files = []
    for root in roots:
        for dirpath, dirnames, names in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            files += [[os.path.join(dirpath, n), _stat(os.path.join(dirpath, n))] for n in sorted(names)
                      if n.endswith(".py")]
    return files


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def fingerprint(options: LaunchOptions) -> str:
    """The hash naming the cache file valid for this code, environment and these launch options."""
    env = {k: v for k, v in os.environ.items() if k.startswith("DFQBENCH_") and k != CACHE_ENV}
    weights = [options.weights, env.get("DFQBENCH_WEIGHTS")]
    folders = [options.weights_dir, env.get("DFQBENCH_WEIGHTS_DIR")]
    state = {
        "schema": SCHEMA, "code": _code_files(), "plugins": entries_fingerprint(), "versions": [_version(d) for d in ("dfqbench", "torch", "pytorchcv")],
        "env": sorted(env.items()), "home": str(Path.home()),  # pytorchcv's download folder is under ~
        "options": [options.weights, options.weights_dir, options.weights_norm, options.protocol, options.overrides],
        "weights": [[w, _stat(Path(w).expanduser())] for w in weights if w],
        "folders": [[f, _listing(str(Path(f).expanduser()))] for f in folders if f],
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:32]


def cell_key(cell: Cell, options: LaunchOptions) -> str:
    """What a cell's decision depends on besides the fingerprint."""
    return json.dumps([cell.method, cell.model, cell.bits, cell.seed, options.protocol or cell.protocol,
                       options.overrides_for(cell)], default=str)


class _Miss(Exception):
    pass


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = parse_json(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else None


def cached_plan(grid: Grid, options: LaunchOptions, filters: dict[str, list[Any]] | None = None,
                seeds: list[int] | None = None) -> Plan | None:
    """The plan from the cache alone, or None when anything it needs is not there or no longer valid."""
    folder = cache_dir()
    data = _load(folder / f"{fingerprint(options)}.json") if folder else None
    if data is None:
        return None
    models: dict[str, dict[str, Any]] = data.get("models", {})

    def datasets(model: str) -> str | None:
        if model not in models:
            raise _Miss
        return models[model]["dataset"]

    try:
        kept, filtered_out, _ = select_cells(grid, filters, seeds, datasets)
        decisions = []
        for cell in kept:
            if cell.excluded:
                decisions.append(Decision("excluded", cell.excluded))
                continue
            found = data["cells"].get(cell_key(cell, options))
            if found is None:
                raise _Miss
            decision = Decision(**found["decision"])
            if decision.kind == "run":  # its run id hashes the teacher: is the teacher's file the same still?
                record = models[cell.model]
                if not record.get("teacher_resolved") or found["teacher_stat"] != _stat(record["teacher_file"]):
                    raise _Miss
            decisions.append(decision)
    except (_Miss, KeyError, TypeError):  # not there, stale, or a cache file from something else
        return None
    return assemble(grid, options, kept, decisions, filtered_out)


def remember(plan: Plan) -> None:
    """Add a full plan's decisions to the cache (best effort: a cache that cannot be written is skipped)."""
    folder = cache_dir()
    if folder is None or not plan.models:
        return
    path = folder / f"{fingerprint(plan.options)}.json"
    data = _load(path) or {"schema": SCHEMA, "models": {}, "cells": {}}
    for model, record in plan.models.items():
        known = data["models"].get(model)
        if record["teacher_resolved"] or known is None or not known.get("teacher_resolved"):
            data["models"][model] = record
    for c in plan.cells:
        if c.decision is not None and c.decision.kind != "excluded":
            data["cells"][cell_key(c.cell, plan.options)] = {
                "decision": dataclasses.asdict(c.decision),
                "teacher_stat": _stat(plan.models.get(c.cell.model, {}).get("teacher_file")),
            }
    try:
        atomic_write_bytes(path, json.dumps(data).encode())
        for old in sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime)[:-KEEP_FILES]:
            old.unlink(missing_ok=True)
    except (OSError, TypeError, ValueError):
        pass  # the cache is an optimisation: a failed write only means the next dry run plans in full


def plan_dry(grid: Grid, options: LaunchOptions, filters: dict[str, list[Any]] | None = None,
             seeds: list[int] | None = None) -> Plan:
    """The plan for a dry run or a status: from the cache when it has everything, else in full (and cached)."""
    plan = cached_plan(grid, options, filters, seeds)
    if plan is None:
        plan = plan_grid(grid, options, filters, seeds)
        remember(plan)
    return plan
