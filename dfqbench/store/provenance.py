"""Where a record came from: the dfqbench checkout's commit and the package versions."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """The commit and dirty flag of the dfqbench checkout, or nulls for an installed copy."""
    return checkout_state(Path(__file__).resolve().parents[2])


def checkout_state(source: Path) -> dict[str, Any]:
    """The commit and dirty flag of the git checkout whose top folder is ``source``, else nulls: an installed
    dfqbench (``site-packages``) is not a checkout, even inside one (a venv in a repository)."""
    try:
        top, commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.splitlines()
        if Path(top).resolve() != source.resolve():
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, ValueError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("dfqbench", "torch", "torchvision", "pytorchcv", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
