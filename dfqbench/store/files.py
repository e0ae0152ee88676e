"""Atomic writes into the results store, and the one-line errors for files it cannot read or write.

Every write goes to a temp file beside its target (``.<name>.<random>.tmp``), is fsynced and renamed over the
target, so a reader sees the old file or the new one, never half of one. A write that the filesystem refuses
(a read-only folder, a full disk) is a :class:`StoreError` naming the file, not a traceback.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from dfqbench.errors import DfqbenchError

TMP_SUFFIX = ".tmp"


class StoreError(DfqbenchError):
    """A file of the results store that cannot be read or written; the message names it and what to do."""


def restart_hint(folder: Path) -> str:
    """What starts a run from scratch: both actions exist (``dfqbench run … --restart`` for a single run)."""
    return f"start this run from scratch with `dfqbench run … --restart`, or by deleting '{folder}'"


def unreadable(kind: str, path: Path, reason: str) -> StoreError:
    """``unreadable <kind> '<path>' (<reason>); <how to start the run from scratch>``."""
    return StoreError(f"unreadable {kind} '{path}' ({reason}); {restart_hint(path.parent)}")


def first_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (what one-line errors quote of an exception)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:limit] if text else ''}".rstrip(": ")


class StoreWriteError(StoreError, OSError):
    """A write the filesystem refused; an ``OSError`` too, so callers that tolerate failed writes (the plan
    cache) still do, while the CLI prints it as one line."""


def cannot_write(path: Path, exc: OSError) -> StoreWriteError:
    reason = exc.strerror or first_line(exc)
    return StoreWriteError(f"cannot write '{path}' ({reason}); check that its folder is writable and has space "
                           "left (for results: give --results a folder you can write to)")


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask (read once: reading it means setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def parse_json(data: str | bytes) -> Any:
    """``json.loads`` for files anyone could have written: every way such text fails (bad JSON, bad UTF-8, and
    nesting too deep for the parser, a ``RecursionError`` otherwise) is a ``ValueError``. The one JSON parser of
    everything dfqbench reads back (store files, manifests, grid indexes, metrics lines)."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when the file is missing, unreadable (a folder, bad JSON, nested too
    deeply) or holds something else."""
    try:
        data = parse_json(path.read_bytes())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, and rename it over ``path``; an ``OSError``
    (permission, read-only or full filesystem) becomes a :class:`StoreError` naming ``path``."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide shared results from colleagues
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(exc, OSError):
            raise cannot_write(path, exc) from None
        raise


def atomic_write_json(path: Path, data: Any, allow_nan: bool = True) -> None:
    """Write ``data`` as indented JSON; ``allow_nan=False`` refuses NaN/inf (a ValueError) so the file stays JSON."""
    text = json.dumps(data, indent=2, sort_keys=True, default=list, allow_nan=allow_nan)
    atomic_write_bytes(path, (text + "\n").encode())


def remove_stale_tmp(folder: Path, keep_prefix: str = ".lease") -> list[Path]:
    """Delete the temp files of atomic writes that never finished (a process killed between write and rename)
    in ``folder``; call only while holding the folder's lease (no one else writes there then). Temp files of
    lease takers (``.lease…``) are kept: another launcher may be taking the lease right now."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(TMP_SUFFIX) and not entry.name.startswith(keep_prefix):
            try:
                Path(entry.path).unlink()
                removed.append(Path(entry.path))
            except FileNotFoundError:
                pass
    return removed
