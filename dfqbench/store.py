"""The results store: one folder per run under ``<results>/runs/``, every write atomic (temp file + rename).

A run folder holds ``spec.json`` (what was asked), ``metrics.jsonl`` (per-iteration and per-epoch logs),
``checkpoint.pt`` (written each epoch, for resuming) and, once finished, ``record.json``. A folder
without ``record.json`` is unfinished, never finished; ``error.json`` says why a run failed.
"""

from __future__ import annotations

import functools
import io
import json
import os
import platform
import subprocess
import tempfile
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

from dfqbench.errors import DfqbenchError
from dfqbench.specs import RunSpec

# torch is imported inside the checkpoint functions only, so that `dfqbench status`, a cached dry run and the
# reporter can use the store's paths and atomic writes without importing it.

RESULTS_ENV = "DFQBENCH_RESULTS"


def default_results_root() -> Path:
    return Path(os.environ.get(RESULTS_ENV, "results"))


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask (read once: reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide shared results from colleagues
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any, allow_nan: bool = True) -> None:
    """Write ``data`` as indented JSON; ``allow_nan=False`` refuses NaN/inf (a ValueError) so the file stays JSON."""
    text = json.dumps(data, indent=2, sort_keys=True, default=list, allow_nan=allow_nan)
    atomic_write_bytes(path, (text + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def unreadable_checkpoint(path: Path, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "Weights only load failed" in first or "Unsupported global" in str(exc):
        first = "it holds objects other than tensors, numbers and strings, which are never unpickled"
    return (f"unreadable checkpoint '{path}' ({type(exc).__name__}: {first[:200]}); delete it to start this run "
            "from scratch")


class RunFolder:
    """The files of one run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spec_path = path / "spec.json"
        self.metrics_path = path / "metrics.jsonl"
        self.checkpoint_path = path / "checkpoint.pt"
        self.record_path = path / "record.json"
        self.error_path = path / "error.json"

    def is_done(self) -> bool:
        return self.record_path.exists()

    def read_record(self) -> dict[str, Any] | None:
        return json.loads(self.record_path.read_text()) if self.is_done() else None

    def create(self, spec: RunSpec) -> None:
        """Create the folder and write the spec (kept if already there: the folder name is its hash)."""
        if not self.spec_path.exists():
            atomic_write_json(self.spec_path, spec.to_dict(), allow_nan=False)  # always valid JSON
        self.error_path.unlink(missing_ok=True)

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
        return rows

    def write_metrics(self, rows: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        atomic_write_bytes(self.metrics_path, text.encode())

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        atomic_torch_save(self.checkpoint_path, state)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last epoch's checkpoint, or None without one. Loaded with ``weights_only=True``: tensors,
        numbers, strings and containers only, so a pickle planted in a shared results folder cannot run code.
        An unreadable file (truncated, foreign, or holding other objects) is a one-line DfqbenchError."""
        if not self.checkpoint_path.exists():
            return None
        import torch

        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError, ...: all unreadable)
            raise DfqbenchError(unreadable_checkpoint(self.checkpoint_path, exc)) from None

    def checkpoint_epoch(self) -> int | None:
        """The last checkpointed epoch, read with the file memory-mapped (its tensors are not loaded); None
        without a readable checkpoint (resuming it then fails with :meth:`load_checkpoint`'s message)."""
        if not self.checkpoint_path.exists():
            return None
        import torch

        try:
            return torch.load(self.checkpoint_path, map_location="cpu", mmap=True, weights_only=True)["epoch"]
        except Exception:  # noqa: BLE001
            return None

    def write_record(self, record: dict[str, Any]) -> None:
        atomic_write_json(self.record_path, record)

    def write_error(self, exc: BaseException) -> None:
        atomic_write_json(
            self.error_path,
            {"type": type(exc).__name__, "message": str(exc), "traceback": traceback.format_exc()},
        )


class ResultsStore:
    """The results root: ``<root>/runs/<run name>/``."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_results_root()

    def folder(self, spec: RunSpec) -> RunFolder:
        return RunFolder(self.root / "runs" / spec.run_name)


@functools.lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """The commit and dirty flag of the dfqbench checkout, or nulls for an installed copy without git."""
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return {"commit": commit, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("dfqbench", "torch", "torchvision", "pytorchcv", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
