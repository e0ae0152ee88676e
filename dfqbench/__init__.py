"""dfqbench: a benchmark harness for data-free quantization (DFQ) methods.

The Python API (:mod:`dfqbench.api`) is reachable from here without importing torch at ``import dfqbench``:
``dfqbench.run``, ``run_grid``, ``load_results``, ``load_metrics``, ``load_student``, ``evaluate`` load on
first use.
"""

from typing import Any

from dfqbench import moved as _moved

_moved.install()

__version__ = "0.1.0"

_API = ("run", "run_grid", "load_results", "load_metrics", "load_student", "evaluate", "run_dir")
__all__ = [*_API, "DfqbenchError", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        from dfqbench import api

        return getattr(api, name)
    if name == "DfqbenchError":
        from dfqbench.errors import DfqbenchError

        return DfqbenchError
    raise AttributeError(f"module 'dfqbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
