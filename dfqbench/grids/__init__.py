"""Named grid files shipped with dfqbench: ``dfqbench run --grid NAME`` reads ``NAME.yaml`` from this folder.

The format is documented in :mod:`dfqbench.launch.grid`; any other YAML file is accepted by path.
"""

from __future__ import annotations

from pathlib import Path

GRID_DIR = Path(__file__).resolve().parent


def shipped_grids() -> list[str]:
    """The names of the grids shipped with the package."""
    return sorted(p.stem for p in GRID_DIR.glob("*.yaml"))
