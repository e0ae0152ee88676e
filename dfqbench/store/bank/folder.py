"""The files of one bank, ``<results>/banks/<bank name>/``, and its state read from them alone.

``manifest.json`` records the bank's key (and its id, which the folder name ends with) and, per finished batch,
its file name, byte count and sha256; ``batch_00000.safetensors`` (or ``.pt``) … hold the batches
(:mod:`dfqbench.store.bank.codec`); ``lease.json`` is there while a task synthesises it
(:mod:`dfqbench.store.lease`). Each batch file is written atomically, then the manifest: a batch counts as
finished only once the manifest lists it, so a killed synthesis resumes after its last listed batch. Importing
this module never imports torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfqbench.errors import DfqbenchError
from dfqbench.store.bank.key import BankKey
from dfqbench.store.files import atomic_write_json, read_json_object
from dfqbench.store.lease import describe_lease, lease_alive, read_lease

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
BANK_STATES = ("pending", "partial", "running", "lost", "done")


def file_sha256(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (a bank file is never held whole for this)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class BankState:
    """``state`` is one of :data:`BANK_STATES`: done (every batch listed), running (a live lease), lost (a
    dead lease: the synthesis was killed; it resumes), partial (some batches, no lease), pending (none)."""

    state: str
    batches_done: int
    num_batches: int | None
    reason: str | None = None


class BankFolder:
    """The files of one bank."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.manifest_path = self.path / MANIFEST

    @property
    def name(self) -> str:
        return self.path.name

    def batch_path(self, index: int, suffix: str) -> Path:
        return self.path / f"batch_{index:05d}{suffix}"

    # -- manifest ---------------------------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any] | None:
        """manifest.json as a dict with a ``batches`` dict, or None when missing or unreadable."""
        data = read_json_object(self.manifest_path)
        if data is None or not isinstance(data.get("batches"), dict):
            return None
        return data

    def manifest_problem(self, key: BankKey, manifest: dict[str, Any] | None) -> str | None:
        """Why ``manifest`` is not this key's bank (None when it is, or when there is none yet)."""
        if manifest is None:
            return None if not self.manifest_path.exists() else "its manifest.json is unreadable"
        if manifest.get("format") != MANIFEST_FORMAT:
            return f"its manifest format is {manifest.get('format')!r}, not {MANIFEST_FORMAT}"
        try:
            recorded = BankKey.from_dict(manifest.get("key"))
        except DfqbenchError as exc:
            return f"its manifest holds no valid key ({exc})"
        if recorded != key or manifest.get("bank_id") != key.bank_id:
            return (f"its manifest was written by another configuration (bank id "
                    f"{str(manifest.get('bank_id'))[:16]!r}, expected {key.bank_id!r})")
        return None

    def new_manifest(self, key: BankKey) -> dict[str, Any]:
        return {"format": MANIFEST_FORMAT, "bank_id": key.bank_id, "name": key.name, "key": key.to_dict(),
                "batches": {}, "complete": False}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        atomic_write_json(self.manifest_path, manifest, allow_nan=False)

    # -- state ------------------------------------------------------------------------------------------------
    def state(self) -> BankState:
        """The bank's state from its manifest and lease only (no batch file is read)."""
        manifest = self.read_manifest()
        done = 0
        total = None
        if manifest is not None and isinstance(manifest.get("key"), dict):
            total = manifest["key"].get("num_batches")
            total = total if isinstance(total, int) and not isinstance(total, bool) else None
            done = len(manifest["batches"])
            if manifest.get("complete") is True and total is not None and done == total:
                return BankState("done", done, total)
        lease = read_lease(self.path)
        if lease is not None:
            if lease_alive(lease):
                return BankState("running", done, total, describe_lease(lease))
            return BankState("lost", done, total, f"synthesis killed ({describe_lease(lease)}); it resumes at "
                                                  f"batch {done + 1}")
        return BankState("partial" if done else "pending", done, total)
