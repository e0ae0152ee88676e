"""Making a bank once: leased like a run, written atomically batch by batch, resumed after a kill.

:func:`build_bank` returns the bank of a key, synthesising what is missing. A task takes the bank's lease
(:class:`dfqbench.store.lease.Lease`) first, so two tasks that need one bank never both synthesise it: the
second waits for the first's lease to end (or, with ``wait=False``, is told who holds it) and then reads the
finished bank. Under the lease, the batches the manifest lists are checked (size, sha256, bank id and index in
the file); a missing, truncated or foreign batch is synthesised again (one line says so), and so is a whole
bank whose manifest belongs to another configuration. Each new batch file is written atomically, then listed
in the manifest. torch is imported lazily.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import time
from typing import TYPE_CHECKING, Callable

from dfqbench.store.bank.codec import SAFETENSORS, TORCH, decode_batch, decode_images, encode_batch, preferred_suffix
from dfqbench.store.bank.folder import BankFolder
from dfqbench.store.bank.key import BankKey
from dfqbench.store.bank.reader import BankReader, load_batch
from dfqbench.store.files import StoreError, atomic_write_bytes, remove_stale_tmp
from dfqbench.store.lease import Lease, describe_lease

if TYPE_CHECKING:
    from torch import Tensor

# produce(index) -> (images, labels, losses): synthesise batch ``index`` (float images, int labels, loss trace)
Produce = Callable[[int], "tuple[Tensor, Tensor, Tensor]"]
# replay(index, images, labels): what a stateful synthesis (IntraQ's class centroids) learns from a finished
# batch; called for every batch in order with the images as stored, whether just made or read back on resume
Replay = Callable[[int, "Tensor", "Tensor"], None]
Say = Callable[[str], None]


class BankBusy(StoreError):
    """Another live task holds the bank's lease (raised only with ``wait=False`` or after ``timeout_s``)."""


def _quiet(text: str) -> None:
    pass


def default_job_id() -> str:
    return os.environ.get("SLURM_JOB_ID") or f"{socket.gethostname()}:{os.getpid()}"


def build_bank(folder: BankFolder, key: BankKey, produce: Produce, replay: Replay | None = None, *,
               job_id: str | None = None, wait: bool = True, poll_s: float = 5.0, timeout_s: float | None = None,
               say: Say = _quiet) -> BankReader:
    """The finished bank of ``key`` in ``folder``, synthesising (under its lease) whatever is missing."""
    started = time.monotonic()
    while True:
        if folder.state().state == "done":
            try:
                reader = BankReader(folder, key)
                reader.verify()
                return reader
            except StoreError as exc:
                say(f"{exc}: rebuilding")
        lease = Lease(folder.path, job_id or default_job_id(), "bank")
        holder = lease.acquire()
        if holder is None:
            break
        if not wait or (timeout_s is not None and time.monotonic() - started > timeout_s):
            raise BankBusy(f"bank '{folder.path}' is being synthesised by {describe_lease(holder)}; run again "
                           "when it is done")
        time.sleep(poll_s)
    lease.start()
    try:
        return _synthesise(folder, key, produce, replay, say)
    finally:
        lease.release()


def _synthesise(folder: BankFolder, key: BankKey, produce: Produce, replay: Replay | None, say: Say) -> BankReader:
    """Under the lease: check what the manifest lists, make the rest in order, mark the bank complete."""
    remove_stale_tmp(folder.path)
    manifest = folder.read_manifest()
    problem = folder.manifest_problem(key, manifest)
    if problem is not None or manifest is None:
        if problem is not None:
            say(f"bank '{folder.path}': {problem}; rebuilding it")
        for suffix in (SAFETENSORS, TORCH):
            for stale in folder.path.glob(f"batch_*{suffix}"):
                stale.unlink(missing_ok=True)
        manifest = folder.new_manifest(key)
        folder.write_manifest(manifest)
    for index in range(key.num_batches):
        entry = manifest["batches"].get(str(index))
        batch = None
        if entry is not None:
            batch, problem = load_batch(folder, key, index, entry)
            if batch is None:
                say(f"bank '{folder.path}' batch {index}: {problem}; synthesising it again")
                del manifest["batches"][str(index)]
                manifest["complete"] = False
                folder.write_manifest(manifest)
        if batch is None:
            images, labels = _make(folder, key, index, produce, manifest)
        else:
            images, labels = batch.images, batch.labels
        if replay is not None:
            replay(index, images, labels)
    manifest["complete"] = True
    folder.write_manifest(manifest)
    return BankReader(folder, key, verified=range(key.num_batches))  # each just written or checked above


def _make(folder: BankFolder, key: BankKey, index: int, produce: Produce, manifest: dict) -> tuple["Tensor", "Tensor"]:
    """Synthesise batch ``index``, write its file atomically, list it; returns the images as stored."""
    images, labels, losses = produce(index)
    suffix = preferred_suffix()
    data = encode_batch(images, labels, losses, key.storage, key.bank_id, index, suffix)
    path = folder.batch_path(index, suffix)
    atomic_write_bytes(path, data)
    other = folder.batch_path(index, TORCH if suffix == SAFETENSORS else SAFETENSORS)
    other.unlink(missing_ok=True)
    final = float(losses[-1]) if losses.numel() else None
    final = final if final is not None and math.isfinite(final) else None
    manifest["batches"][str(index)] = {"file": path.name, "bytes": len(data),
                                       "sha256": hashlib.sha256(data).hexdigest(), "final_loss": final}
    folder.write_manifest(manifest)
    tensors, _ = decode_batch(data, suffix)
    return decode_images(tensors).to(images.device), tensors["labels"].to(labels.device)

