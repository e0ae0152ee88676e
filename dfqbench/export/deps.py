"""The optional packages of the export (the ``export`` extra: onnx, onnxruntime, safetensors)."""

from __future__ import annotations

import importlib.util

from dfqbench.errors import DfqbenchError

EXTRA = "pip install 'dfqbench[export]'"


def installed(package: str) -> bool:
    """Whether ``package`` can be imported (found without importing it)."""
    return importlib.util.find_spec(package) is not None


def require(package: str, needed_by: str) -> None:
    """Raise a one-line :class:`DfqbenchError` saying what to install when ``package`` is not importable."""
    if not installed(package):
        raise DfqbenchError(f"{needed_by} needs the {package} package, which is not installed: {EXTRA} "
                            "(onnx, onnxruntime, safetensors)")
