"""``checkpoint.pt``: a run's state after its last finished epoch, for resuming. torch is imported inside
these functions only, so that the rest of the store (status, reports, cached dry runs) stays torch-free."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from dfqbench.store.files import atomic_write_bytes, restart_hint


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def unreadable_checkpoint(path: Path, exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = " ".join(lines[:2]) if lines and lines[0].endswith(":") else (lines[0] if lines else "")  # the cause
    if "Weights only load failed" in first or "Unsupported global" in str(exc):
        first = "it holds objects other than tensors, numbers and strings, which are never unpickled"
    return f"unreadable checkpoint '{path}' ({type(exc).__name__}: {first[:200]}); {restart_hint(path.parent)}"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_torch_save(path, state)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The last epoch's checkpoint, or None without one. Loaded with ``weights_only=True``: tensors, numbers,
    strings and containers only, so a pickle planted in a shared results folder cannot run code. An
    unreadable file (truncated, foreign, or holding other objects) is a one-line StoreError."""
    from dfqbench.store.files import StoreError

    if not path.exists():
        return None
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (UnpicklingError, RuntimeError, EOFError, ...: all unreadable)
        raise StoreError(unreadable_checkpoint(path, exc)) from None
    if not isinstance(state, dict) or not isinstance(state.get("epoch"), int):
        raise StoreError(unreadable_checkpoint(path, ValueError("not a dfqbench checkpoint (no epoch)")))
    return state


def checkpoint_epoch(path: Path) -> int | None:
    """The last checkpointed epoch, read with the file memory-mapped (its tensors are not loaded); None without
    a readable checkpoint (resuming it then fails with :func:`load_checkpoint`'s message)."""
    if not path.exists():
        return None
    import torch

    try:
        epoch = torch.load(path, map_location="cpu", mmap=True, weights_only=True)["epoch"]
    except Exception:  # noqa: BLE001
        return None
    return epoch if isinstance(epoch, int) else None
