"""Reading a finished bank: checked batch by batch (size, sha256, the bank id and index inside the file), streamed
one batch file at a time, or gathered by image index through memory-mapped files; never the whole bank in RAM
unless :meth:`BankReader.load_all` is asked for. torch is imported lazily."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from dfqbench.store.bank.codec import SAFETENSORS, TORCH, decode_batch, decode_images
from dfqbench.store.bank.folder import BankFolder, file_sha256
from dfqbench.store.bank.key import BankKey
from dfqbench.store.files import StoreError

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class BankBatch:
    """One stored batch: float32 images, their sampled labels and the synthesis loss before each step."""

    index: int
    images: "Tensor"
    labels: "Tensor"
    losses: "Tensor"


def entry_path(folder: BankFolder, index: int, entry: Any) -> tuple[Path | None, str | None]:
    """The batch file a manifest entry names (only ``batch_<index>.safetensors|.pt``), or why it is invalid."""
    if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or not isinstance(entry.get("bytes"), int):
        return None, "its manifest entry is invalid"
    for suffix in (SAFETENSORS, TORCH):
        path = folder.batch_path(index, suffix)
        if entry.get("file") == path.name:
            return path, None
    return None, f"its manifest entry names {str(entry.get('file'))[:60]!r}, not a batch file of index {index}"


def load_batch(folder: BankFolder, key: BankKey, index: int, entry: Any, check_sha: bool = True
               ) -> tuple[BankBatch | None, str | None]:
    """Batch ``index`` as the manifest lists it, or None and why it cannot be used (missing, truncated, another
    checksum, written for another bank or index, unreadable). ``check_sha=False``: the file's checksum was
    already checked in this process (:meth:`BankReader.verify`), so it is not hashed again."""
    path, problem = entry_path(folder, index, entry)
    if path is None:
        return None, problem
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, f"{path.name} cannot be read ({exc.strerror or exc})"
    if len(data) != entry["bytes"]:
        return None, f"{path.name} has {len(data):,} bytes, the manifest says {entry['bytes']:,} (truncated?)"
    if check_sha and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return None, f"{path.name} does not match its checksum in the manifest"
    try:
        tensors, meta = decode_batch(data, path.suffix)
    except ValueError as exc:
        return None, f"{path.name} is unreadable ({exc})"
    if meta.get("bank_id") != key.bank_id or meta.get("index") != str(index):
        return None, (f"{path.name} was written for bank {str(meta.get('bank_id'))[:16]!r} batch "
                      f"{str(meta.get('index'))[:8]}, not {key.bank_id!r} batch {index}")
    images = decode_images(tensors)
    if tuple(images.shape[1:]) != (3, key.image_size, key.image_size) or images.shape[0] != key.batch_size:
        return None, f"{path.name} holds images of shape {tuple(images.shape)}, not ({key.batch_size}, 3, " \
                     f"{key.image_size}, {key.image_size})"
    return BankBatch(index, images, tensors["labels"], tensors["losses"]), None


class BankReader:
    """A finished bank of ``key`` in ``folder``; every problem is a one-line StoreError naming the file."""

    def __init__(self, folder: BankFolder, key: BankKey, verified: Iterable[int] = ()) -> None:
        """``verified``: batch indices whose files this process has just written or checked (not hashed again)."""
        self.folder, self.key = folder, key
        manifest = folder.read_manifest()
        problem = folder.manifest_problem(key, manifest) or (
            None if manifest is not None else "it has no manifest.json")
        if problem is None and (manifest.get("complete") is not True or len(manifest["batches"]) != key.num_batches):
            problem = f"it is incomplete ({len(manifest['batches'])}/{key.num_batches} batches)"
        if problem is not None:
            raise self._error(problem)
        self.entries = [manifest["batches"].get(str(i)) for i in range(key.num_batches)]
        self._verified: set[int] = set(verified)
        self._open: dict[int, Any] = {}

    def _error(self, problem: str) -> StoreError:
        return StoreError(f"bank '{self.folder.path}' cannot be used: {problem}; run the synthesis again to rebuild "
                          f"it, or delete the folder")

    def __len__(self) -> int:
        return self.key.images

    @property
    def num_batches(self) -> int:
        return self.key.num_batches

    def read_batch(self, index: int) -> BankBatch:
        """Batch ``index``, checked (size, checksum, bank id and index) as it is read."""
        batch, problem = load_batch(self.folder, self.key, index, self.entries[index],
                                    check_sha=index not in self._verified)
        if batch is None:
            raise self._error(f"batch {index}: {problem}")
        self._verified.add(index)
        return batch

    def batches(self) -> Iterator[BankBatch]:
        """The batches in order, one file read (and held) at a time."""
        for index in range(self.num_batches):
            yield self.read_batch(index)

    def verify(self) -> None:
        """Check every batch file's size and checksum, streaming (no file held whole)."""
        for index in range(self.num_batches):
            self._verify(index)

    def _verify(self, index: int) -> Path:
        path, problem = entry_path(self.folder, index, self.entries[index])
        if path is None:
            raise self._error(f"batch {index}: {problem}")
        if index not in self._verified:
            try:
                size, digest = path.stat().st_size, file_sha256(path)
            except OSError as exc:
                raise self._error(f"batch {index}: {path.name} cannot be read ({exc.strerror or exc})") from None
            if size != self.entries[index]["bytes"] or digest != self.entries[index]["sha256"]:
                raise self._error(f"batch {index}: {path.name} does not match its size and checksum in the manifest")
            self._verified.add(index)
        return path

    def labels(self) -> "Tensor":
        """Every image's sampled label, in bank order (small: int64 per image)."""
        import torch

        return torch.cat([self._tensors(i)["labels"][:] for i in range(self.num_batches)])

    def _tensors(self, index: int) -> Any:
        """Batch ``index``'s tensors, memory-mapped (checked once; pages are read as rows are indexed)."""
        if index not in self._open:
            path = self._verify(index)
            if path.suffix == SAFETENSORS:
                from safetensors import safe_open

                handle = safe_open(str(path), framework="pt")
                self._open[index] = {name: handle.get_slice(name) for name in handle.keys()}
            else:
                import torch

                self._open[index] = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return self._open[index]

    def gather(self, indices: "Tensor") -> tuple["Tensor", "Tensor"]:
        """Images (float32) and labels of bank positions ``indices`` (any order), read from the memory-mapped
        batch files: only their rows are paged in."""
        import torch

        rows_images, rows_labels = [], []
        size = self.key.batch_size
        for position in indices.tolist():
            tensors = self._tensors(position // size)
            row = position % size
            rows_images.append(decode_images(tensors, slice(row, row + 1)))
            rows_labels.append(tensors["labels"][row:row + 1])
        return torch.cat(rows_images), torch.cat(rows_labels)

    def load_all(self) -> tuple["Tensor", "Tensor"]:
        """The whole bank in memory (float32 images, labels): for small banks (CIFAR: 5,120 images = 63 MB)."""
        import torch

        batches = list(self.batches())
        return torch.cat([b.images for b in batches]), torch.cat([b.labels for b in batches])

    def close(self) -> None:
        self._open.clear()
