"""The engines a run can ask for, checked without importing torch (the CLI checks flags before a cached dry run)."""

from __future__ import annotations

from dfqbench.errors import DfqbenchError
from dfqbench.registry import unknown_choice

ENGINES = ("auto", "eager", "compiled")


def check_engine(name: object) -> str:
    """``name`` if it is one of :data:`ENGINES`, else a one-line DfqbenchError naming the choices."""
    if not isinstance(name, str) or name not in ENGINES:
        raise DfqbenchError(unknown_choice("engine", name, list(ENGINES)))
    return name
