"""A grid's cells as launched: ``<results>/grids/<grid>/cells.json``, the grid's membership for reports.

`dfqbench run --grid NAME` (a launch, not a dry run) writes every cell of the grid there — its label, status,
reason, and for a run its id, folder name and spec — merged with earlier launches of the same grid cell by
cell (a cell planned again, e.g. with other ``--weights``, replaces its entry). A launch restricted with
``--only``/``--seeds`` still records the whole grid as its file defines it, plus the cells it launched. `dfqbench report --grid NAME` reads it to select the grid's runs and
show its pending cells without re-planning the grid, so the report imports neither torch nor any method
plugin nor the launcher. Torch-free; written atomically.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml

from dfqbench.errors import DfqbenchError
from dfqbench.specs import read_yaml
from dfqbench.store.files import parse_json

SCHEMA = 1


def index_path(results: Path, grid: str) -> Path:
    """``<results>/grids/<grid>/cells.json`` (the store's layout)."""
    from dfqbench.store import ResultsStore

    return ResultsStore(results).grid_index_path(grid)


def write_grid_index(results: Path, grid: str, cells: list[dict[str, Any]]) -> Path:
    """Merge ``cells`` (dicts with at least ``label`` and ``status``) into the grid's index; returns its path."""
    from dfqbench.store import atomic_write_json

    path = index_path(results, grid)
    known = read_grid_index(results, grid) or {}
    known.update({cell["label"]: cell for cell in cells})
    atomic_write_json(path, {"schema": SCHEMA, "grid": grid,
                             "updated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cells": known})
    return path


def read_grid_index(results: Path, grid: str) -> dict[str, dict[str, Any]] | None:
    """label → cell entry, or None when the grid was never launched into ``results``."""
    path = index_path(results, grid)
    try:
        data = parse_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DfqbenchError(f"cannot read the grid index '{path}' ({type(exc).__name__}); delete it and launch the "
                            "grid again (finished runs are kept and skipped)") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("cells"), dict):
        raise DfqbenchError(f"grid index '{path}' is not a schema-{SCHEMA} index; delete it and launch the grid again "
                            "(finished runs are kept and skipped)")
    return data["cells"]


def grid_runs(cells: dict[str, dict[str, Any]]) -> dict[str, str]:
    """run id → run name of a grid's runs, from its index: the distinct run ids of its cells. A cell that
    duplicates another's run, or has no run (excluded, unsupported, invalid, …), is no run of its own; two cells
    that resolve to one run id are one run. ``status`` and ``report --grid`` both count a grid's runs this way."""
    runs: dict[str, str] = {}
    for cell in cells.values():
        if cell.get("duplicate_of") or cell.get("run_id") is None or not isinstance(cell.get("run_name"), str):
            continue
        runs.setdefault(cell["run_id"], cell["run_name"])
    return runs


def grid_name(text: str) -> str:
    """The name a grid is launched under: a shipped grid's name, or a grid file's ``name:`` (else its stem)."""
    path = Path(text).expanduser()
    if not (path.suffix in (".yaml", ".yml") or "/" in text or path.is_file()):
        return text
    try:
        raw = read_yaml(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise DfqbenchError(f"cannot read grid file '{path}' ({type(exc).__name__})") from None
    name = raw.get("name") if isinstance(raw, dict) else None
    return str(name or path.stem)
