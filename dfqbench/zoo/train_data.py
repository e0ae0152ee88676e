"""Training splits for the real-data reference (``real_kd``, not data-free): where they are, which images a bank
takes, what identifies those images, and reading only them.

Where (under the data root: ``data_root``, else ``DFQBENCH_DATA``, else ``~/.cache/dfqbench/data``, as the test
sets of :mod:`dfqbench.zoo.data`):

- CIFAR-10/100: ``<root>/cifar10-train/`` (``cifar100-train/``) in ImageFolder layout (one folder per class,
  labels = sorted folder names, as the test folders), else torchvision's ``cifar-10-batches-py`` /
  ``cifar-100-python`` under ``<root>`` (downloaded there when missing and online; torchvision checks every
  file against its md5 list before reading it, so only the official archive's files are ever unpickled).
- ImageNet: ``<root>/imagenet/train/`` or ``<root>/train/`` in ImageFolder layout. Only the chosen images are
  decoded (resize the short side to ``size / 0.875``, centre-crop ``size``: the validation transform); the
  split is never held in memory.
- tiny (the test network): images of the tiny task (:mod:`dfqbench.zoo.tiny`) drawn with a seed of their own,
  never its test images.

Which images (:func:`choose_images`): ``count`` of them, class-balanced by default (⌊count / C⌋ per class, the
remainder to classes drawn by the seed), each class's drawn without replacement, then shuffled; every draw
from a ``torch.Generator`` seeded by sha256 of the seed, so a bank is reproducible.

Identity (:meth:`TrainSplit.identity`, hashed into the bank key by ``methods/real_kd.py``): torchvision's CIFAR
by its md5 list (the files it reads are checked against it); a folder by a digest of its sorted
``class/relative path`` names (which files exist, hence the labels and the draw) and, for the chosen images
only, a digest of their bytes (sha256 per file, cached by path, size and modification time): renaming, adding
or removing a file, or changing a chosen one, gives another identity; the folder's own path is not part of it.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dfqbench.errors import DfqbenchError
from dfqbench.zoo import tiny
from dfqbench.zoo.data import ENV_DATA, IMAGE_EXTENSIONS, _class_dirs, _data_root, _read, _Transform
from dfqbench.zoo.models import ModelInfo
from dfqbench.zoo.teacher import file_sha256

SOURCES = ("auto", "folder", "torchvision")
TINY_TRAIN_SEED = 50_000  # tiny_test_set's generator seed is 10_000 + seed: this stream never meets the test set's
TINY_TRAIN_IMAGES = 2_560
_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet", "tiny": "tiny"}
_FOLDERS = {"cifar10": ("cifar10-train",), "cifar100": ("cifar100-train",), "imagenet": ("imagenet/train", "train")}


def files_digest(paths: Sequence[str]) -> str:
    """sha256 over the files' own sha256s, in order (each computed once per path, size and modification time)."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            digest.update(file_sha256(Path(path)).encode())
        except OSError as exc:
            raise DfqbenchError(f"cannot read training image '{path}' ({exc.strerror or exc}); fix or remove it") \
                from None
    return digest.hexdigest()


def choose_images(labels: torch.Tensor, count: int, num_classes: int, seed: int, balanced: bool = True
                  ) -> torch.Tensor:
    """Positions of ``count`` images of a split with ``labels`` (int64), without replacement, in a seeded random
    order; ``balanced``: ⌊count / C⌋ per class and one more for ``count mod C`` classes drawn by the seed."""
    n = int(labels.numel())
    if count > n:
        raise DfqbenchError(f"the real-data bank needs {count:,} images but the training split has {n:,}; lower "
                            "method.bank_batches or method.bank_batch_size")
    digest = hashlib.sha256(f"dfqbench-real-images:{seed}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    if not balanced:
        return torch.randperm(n, generator=generator)[:count]
    quota = torch.full((num_classes,), count // num_classes, dtype=torch.int64)
    quota[torch.randperm(num_classes, generator=generator)[:count % num_classes]] += 1
    chosen = []
    for c in range(num_classes):
        positions = (labels == c).nonzero().flatten()
        if positions.numel() < quota[c]:
            raise DfqbenchError(f"class {c} of the training split has {positions.numel():,} images, fewer than the "
                                f"{int(quota[c]):,} a class-balanced bank of {count:,} needs; lower the bank size or "
                                "set method.balanced=false")
        chosen.append(positions[torch.randperm(positions.numel(), generator=generator)[:quota[c]]])
    picked = torch.cat(chosen)
    return picked[torch.randperm(picked.numel(), generator=generator)]


@dataclass
class TrainSplit:
    """A located training split: its labels (int64, one per image), a description, and how to read images."""

    dataset: str
    kind: str  # "folder" | "torchvision" | "tiny"
    description: str
    labels: torch.Tensor  # torchvision: empty until :meth:`load`
    base_identity: dict[str, Any]
    paths: list[str] = field(default_factory=list)  # folder: one file per image
    transform: _Transform | None = None
    root: Path | None = None  # torchvision: where its files are (read on first use)
    _array: np.ndarray | None = field(default=None, repr=False)  # torchvision / tiny: N×H×W×3 or N×3×H×W uint8

    def load(self) -> None:
        """torchvision's split: read its labels and images (md5-checked; downloaded when missing) on first need."""
        if self.kind == "torchvision" and self._array is None:
            array, labels = _torchvision_train(self.dataset, self.root)  # type: ignore[arg-type]
            self._array, self.labels = array, torch.tensor(labels, dtype=torch.int64)

    def choose(self, count: int, num_classes: int, seed: int, balanced: bool = True) -> torch.Tensor:
        """:func:`choose_images` on this split's labels."""
        self.load()
        return choose_images(self.labels, count, num_classes, seed, balanced)

    def identity(self, count: int, num_classes: int, seed: int, balanced: bool = True) -> dict[str, Any]:
        """What names the content of the images :meth:`choose` picks with these arguments (module docstring):
        torchvision's and tiny's splits are fixed (nothing is read); a folder's adds its chosen files' bytes."""
        if self.kind != "folder":
            return dict(self.base_identity)
        chosen = self.choose(count, num_classes, seed, balanced)
        return {**self.base_identity, "chosen_sha256": files_digest([self.paths[i] for i in chosen.tolist()])}

    def read(self, positions: Sequence[int], threads: int = 4) -> torch.Tensor:
        """The images at ``positions`` as uint8 N×3×S×S (only these are read and decoded)."""
        positions = list(positions)
        if self.kind == "folder":
            assert self.transform is not None
            out = torch.empty((len(positions), 3, self.transform.crop, self.transform.crop), dtype=torch.uint8)
            workers = max(1, min(threads, os.cpu_count() or 1, len(positions)))

            def work(start: int) -> None:
                for i in range(start, len(positions), workers):
                    out[i] = _read(self.paths[positions[i]], self.transform)

            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(work, range(workers)))
            return out
        self.load()
        assert self._array is not None
        images = torch.from_numpy(np.ascontiguousarray(self._array[np.asarray(positions, dtype=np.int64)]))
        return images if self.kind == "tiny" else images.permute(0, 3, 1, 2).contiguous()


def _torchvision_class(dataset: str) -> Any:
    from torchvision import datasets

    return datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100


def _torchvision_train(dataset: str, root: Path) -> tuple[np.ndarray, list[int]]:
    """torchvision's CIFAR train images (N×32×32×3 uint8) and labels, downloading into ``root`` when missing."""
    import contextlib
    import io

    cls = _torchvision_class(dataset)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            data = cls(str(root), train=True, download=True)
    except Exception as exc:  # noqa: BLE001  (URLError offline, a corrupted archive, a read-only root …)
        raise DfqbenchError(f"no {_TITLES[dataset]} train split under '{root}' (expected "
                            f"{root}/{_FOLDERS[dataset][0]}/ in ImageFolder layout or torchvision's {cls.base_folder}) "
                            "and download failed "
                            f"({type(exc).__name__}); set {ENV_DATA}") from None
    return data.data, list(data.targets)


def _scan_names(folder: Path) -> tuple[list[str], list[int], str, int]:
    """Image files and labels (class = sorted folder name), a digest of their ``class/relative path`` names (no
    file is opened or stat'ed), and the class count."""
    paths, labels = [], []
    names = hashlib.sha256()
    classes = _class_dirs(folder)
    for label, cls in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(folder / cls):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    path = os.path.join(dirpath, fname)
                    paths.append(path)
                    labels.append(label)
                    names.update(f"{os.path.relpath(path, folder)}\n".encode())
    return paths, labels, names.hexdigest(), len(classes)


def train_folder(info: ModelInfo, root: Path) -> Path | None:
    """The ImageFolder train split of ``info.dataset`` under ``root``, if there is one."""
    for rel in _FOLDERS.get(info.dataset, ()):
        if (root / rel).is_dir():
            return root / rel
    return None


def locate_train_split(info: ModelInfo, source: str = "auto", data_root: str | Path | None = None) -> TrainSplit:
    """The training split of ``info``'s dataset from ``source``: "folder" (ImageFolder layout, see the module
    docstring), "torchvision" (CIFAR only) or "auto" (the folder when it exists, else torchvision for CIFAR).
    Reads file names (folder) or labels (torchvision, downloading when missing), never the images."""
    if source not in SOURCES:
        raise DfqbenchError(f"invalid method.source={source!r}; choices: {', '.join(SOURCES)}")
    if info.dataset == "tiny":
        images, labels = tiny.tiny_test_set(TINY_TRAIN_IMAGES, seed=TINY_TRAIN_SEED)
        identity = {"kind": "tiny", "teacher_fit": dict(tiny.TEACHER_ID), "seed": TINY_TRAIN_SEED,
                    "images": TINY_TRAIN_IMAGES}
        return TrainSplit("tiny", "tiny", f"the tiny task's train images ({TINY_TRAIN_IMAGES:,}, seed "
                          f"{TINY_TRAIN_SEED})", labels, identity, _array=images.numpy())
    if info.dataset not in _FOLDERS:
        raise DfqbenchError(f"no training split for dataset {info.dataset!r}; choices: "
                            f"{', '.join(sorted(_FOLDERS))}, tiny")
    root, origin = _data_root(None if data_root is None else str(data_root))
    title = _TITLES[info.dataset]
    folder = train_folder(info, root) if source != "torchvision" else None
    if folder is not None:
        crop = info.input_size
        transform = _Transform(crop if info.dataset != "imagenet" else int(crop / info.crop_fraction), crop)
        paths, labels, names, classes = _scan_names(folder)
        if classes != info.num_classes:
            raise DfqbenchError(f"train folder '{folder}' has {classes} class folders, expected {info.num_classes} "
                                f"for {info.dataset}; set {ENV_DATA} to a data root whose train folder has them")
        if not paths:
            raise DfqbenchError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in train folder '{folder}'")
        identity = {"kind": "folder", "dataset": info.dataset, "split": "train", "files": len(paths),
                    "names_sha256": names, "transform": transform.description}
        return TrainSplit(info.dataset, "folder", f"{title} train folder '{folder}' ({len(paths):,} images, "
                          f"{transform.description})", torch.tensor(labels, dtype=torch.int64), identity,
                          paths=paths, transform=transform)
    if source == "folder" or info.dataset == "imagenet":
        wanted = " or ".join(f"{root / rel}/" for rel in _FOLDERS[info.dataset])
        raise DfqbenchError(f"no {title} train folder under data root '{root}' (from {origin}; expected {wanted} in "
                            f"ImageFolder layout with {info.num_classes} class folders); set {ENV_DATA}")
    cls = _torchvision_class(info.dataset)
    identity = {"kind": "torchvision", "dataset": info.dataset, "split": "train", "archive_md5": cls.tgz_md5,
                "files_md5": [list(entry) for entry in cls.train_list]}
    return TrainSplit(info.dataset, "torchvision", f"{title} train split (torchvision, '{root}')",
                      torch.empty(0, dtype=torch.int64), identity, root=root)
