"""Test sets (decoded once, cached as uint8 tensors) and the top-1 Evaluator (the official codes' test sets).

Data root: ``data_root``, else ``DFQBENCH_DATA``, else ``~/.cache/dfqbench/data``. CIFAR-10/100 are read from
``<root>/cifar10-test/`` (``cifar100-test/``) or ``<root>`` in ImageFolder layout, else via torchvision
(downloading when online); ImageNet from ``<root>/imagenet/val``, ``<root>/val`` or ``<root>`` (resize
``size/0.875`` + centre crop). Decoded sets under ~2 GiB are cached in ``DFQBENCH_CACHE`` (else
``~/.cache/dfqbench``) keyed by a stat walk; larger ones stream through a DataLoader.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from dfqbench.errors import DfqbenchError
from dfqbench.zoo.models import ModelInfo
from dfqbench.zoo.normalization import Normalization

ENV_DATA, ENV_CACHE = "DFQBENCH_DATA", "DFQBENCH_CACHE"
CACHE_LIMIT_BYTES = 2 * 1024**3
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff")
_CACHE_VERSION = 1
_FIX = f"set --data-root DIR or {ENV_DATA}"
_TITLES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}
_MEMO: dict[str, "TestSet"] = {}
_MEMO_LOCK = threading.Lock()


@dataclass
class TestSet:
    """Either decoded uint8 ``images`` (N×3×H×W) + ``labels``, or a streaming ``dataset`` of float [0,1] images."""

    __test__ = False  # not a pytest test class
    images: torch.Tensor | None
    labels: torch.Tensor | None
    dataset: Dataset | None
    description: str
    num_classes: int


class _Transform:
    """PIL image → uint8 CHW tensor: resize the short side to ``resize`` and centre-crop ``crop`` (if needed)."""

    def __init__(self, resize: int, crop: int) -> None:
        self.resize, self.crop = resize, crop
        self.description = f"rgb-resize{resize}-crop{crop}-bilinear"

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from torchvision.transforms import functional as tf

        image = image.convert("RGB")
        if image.size != (self.crop, self.crop):
            if min(image.size) != self.resize:
                image = tf.resize(image, self.resize, interpolation=tf.InterpolationMode.BILINEAR)
            image = tf.center_crop(image, self.crop)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def _read(path: str, transform: _Transform) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            return transform(image)
    except (OSError, ValueError) as exc:
        raise DfqbenchError(f"cannot decode image '{path}' ({type(exc).__name__}); fix or remove it") from exc


class _FolderDataset(Dataset):
    """Streams (float [0,1] image, label) from image files, for sets too large to cache."""

    def __init__(self, paths: list[str], labels: list[int], transform: _Transform) -> None:
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return _read(self.paths[index], self.transform).float().div_(255), self.labels[index]


def clear_memory_cache() -> None:
    """Forget the in-process memo (the on-disk cache stays)."""
    with _MEMO_LOCK:
        _MEMO.clear()


def cache_root() -> Path:
    return Path(os.environ.get(ENV_CACHE) or "~/.cache/dfqbench").expanduser()


def _data_root(data_root: str | None) -> tuple[Path, str]:
    if data_root is not None:
        return Path(data_root).expanduser(), "--data-root"
    if os.environ.get(ENV_DATA):
        return Path(os.environ[ENV_DATA]).expanduser(), ENV_DATA
    return Path("~/.cache/dfqbench/data").expanduser(), "default"


def _class_dirs(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _find_folder(info: ModelInfo, root: Path) -> Path | None:
    """The ImageFolder for ``info.dataset`` under ``root``; a named folder with the wrong class count is an error."""
    named = {"cifar10": ["cifar10-test"], "cifar100": ["cifar100-test"], "imagenet": ["imagenet/val", "val"]}
    for rel in named[info.dataset]:
        folder = root / rel
        if folder.is_dir():
            if len(_class_dirs(folder)) != info.num_classes:
                raise DfqbenchError(f"test folder '{folder}' has {len(_class_dirs(folder))} class folders, expected "
                                    f"{info.num_classes} for {info.dataset}; {_FIX}")
            return folder
    return root if root.is_dir() and len(_class_dirs(root)) == info.num_classes else None


def _scan(folder: Path) -> tuple[list[str], list[int], str]:
    """Files and labels (class = sorted folder name) plus a cheap fingerprint from a stat walk."""
    paths, labels, count, size, newest = [], [], 0, 0, 0
    names = hashlib.sha256()
    for label, cls in enumerate(_class_dirs(folder)):
        for dirpath, dirnames, filenames in os.walk(folder / cls):
            dirnames.sort()
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    path = os.path.join(dirpath, fname)
                    st = os.stat(path)
                    paths.append(path), labels.append(label)
                    count, size, newest = count + 1, size + st.st_size, max(newest, st.st_mtime_ns)
                    names.update(f"{label}/{fname}\n".encode())
    return paths, labels, json.dumps([str(folder.resolve()), count, size, newest, names.hexdigest()])


def _decode_images(paths: list[str], transform: _Transform, threads: int = 4) -> torch.Tensor:
    """Decode all files into one uint8 tensor with a few threads (PIL releases the GIL while decoding)."""
    out = torch.empty((len(paths), 3, transform.crop, transform.crop), dtype=torch.uint8)
    threads = max(1, min(threads, os.cpu_count() or 1, len(paths)))

    def work(start: int) -> None:
        for i in range(start, len(paths), threads):
            out[i] = _read(paths[i], transform)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(work, range(threads)))
    return out


def _save_atomic(obj: dict, path: Path) -> None:
    """Write the cache file atomically, readable as the umask allows (a shared ``DFQBENCH_CACHE`` serves
    colleagues too; mkstemp's 0600 would not)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        mask = os.umask(0o022)
        os.umask(mask)
        os.fchmod(fd, 0o666 & ~mask)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as exc:
        warnings.warn(f"cannot write the test-set cache '{path}' ({exc}); decoding again next time")


def _folder_set(info: ModelInfo, folder: Path) -> TestSet:
    crop = info.input_size
    transform = _Transform(crop if info.dataset != "imagenet" else int(crop / info.crop_fraction), crop)
    paths, labels, fingerprint = _scan(folder)
    if not paths:
        raise DfqbenchError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in test folder '{folder}'; {_FIX}")
    desc = f"{_TITLES[info.dataset]} test set from '{folder}' ({len(paths)} images, {transform.description})"
    label_tensor = torch.tensor(labels, dtype=torch.int64)
    if len(paths) * 3 * crop * crop > CACHE_LIMIT_BYTES:
        return TestSet(None, label_tensor, _FolderDataset(paths, labels, transform), desc, info.num_classes)
    key = hashlib.sha256(json.dumps([_CACHE_VERSION, fingerprint, transform.description]).encode()).hexdigest()
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    cache_file = cache_root() / "testsets" / f"{key[:32]}.pt"
    images = None
    if cache_file.is_file():
        try:
            cached = torch.load(cache_file, map_location="cpu", weights_only=True)
            if torch.equal(cached["labels"], label_tensor) and cached["images"].shape[0] == len(paths):
                images = cached["images"]
        except Exception:  # a corrupt or foreign cache file: decode again and overwrite it
            images = None
    if images is None:
        images = _decode_images(paths, transform)
        _save_atomic({"images": images, "labels": label_tensor, "key": key}, cache_file)
    test_set = TestSet(images, label_tensor, None, desc, info.num_classes)
    with _MEMO_LOCK:
        _MEMO[key] = test_set
    return test_set


def _torchvision_dataset(dataset: str, root: Path) -> Dataset:
    """torchvision's CIFAR10/100 test split, downloading into ``root`` when it is missing."""
    from torchvision import datasets

    cls = datasets.CIFAR10 if dataset == "cifar10" else datasets.CIFAR100
    with contextlib.redirect_stdout(io.StringIO()):
        return cls(str(root), train=False, download=True)


def _torchvision_set(info: ModelInfo, root: Path, origin: str) -> TestSet:
    key = f"torchvision:{info.dataset}:{root.resolve()}"
    with _MEMO_LOCK:
        if key in _MEMO:
            return _MEMO[key]
    existed = root.exists()
    try:
        ds = _torchvision_dataset(info.dataset, root)
    except Exception as exc:  # URLError/ConnectionError offline, bad archives, read-only roots ...
        if not existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()  # do not leave behind the empty folder torchvision created
        folder = "cifar10-test" if info.dataset == "cifar10" else "cifar100-test"
        batches = "cifar-10-batches-py" if info.dataset == "cifar10" else "cifar-100-python"
        raise DfqbenchError(
            f"no {_TITLES[info.dataset]} test set under data root '{root}' (from {origin}; expected "
            f"{root / folder}/ in ImageFolder layout or torchvision's {batches}) and download failed "
            f"({type(exc).__name__}); {_FIX}"
        ) from exc
    images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(ds.targets, dtype=torch.int64)
    desc = f"{_TITLES[info.dataset]} test set (torchvision, '{root}', {len(labels)} images)"
    test_set = TestSet(images, labels, None, desc, info.num_classes)
    with _MEMO_LOCK:
        _MEMO[key] = test_set
    return test_set


def load_test_set(info: ModelInfo, data_root: str | None = None) -> TestSet:
    """The test set for ``info.dataset`` (see the module docstring for where it is looked for)."""
    if info.dataset == "tiny":
        from dfqbench.zoo.tiny import tiny_test_set

        images, labels = tiny_test_set()
        return TestSet(images, labels, None, f"tiny synthetic test set ({len(labels)} images)", info.num_classes)
    if info.dataset not in _TITLES:
        raise DfqbenchError(f"unknown dataset {info.dataset!r}; choices: {', '.join(sorted(_TITLES))}, tiny")
    root, origin = _data_root(data_root)
    if root.exists() and (not root.is_dir() or not os.access(root, os.R_OK | os.X_OK)):
        raise DfqbenchError(f"data root '{root}' (from {origin}) is not a readable folder; {_FIX}")
    folder = _find_folder(info, root) if root.is_dir() else None
    if folder is not None:
        return _folder_set(info, folder)
    if info.dataset == "imagenet":
        raise DfqbenchError(
            f"no ImageNet validation set under data root '{root}' (from {origin}; expected {root}/imagenet/val/, "
            f"{root}/val/ or {root}/ in ImageFolder layout with {info.num_classes} class folders); {_FIX}"
        )
    return _torchvision_set(info, root, origin)


class Evaluator:
    """Top-1 accuracy on a test set (or a fixed seeded subset of it), normalising uint8 batches on the device."""

    def __init__(
        self,
        test_set: TestSet,
        normalization: Normalization,
        device: torch.device | str = "cpu",
        batch_size: int = 500,
        max_images: int | None = None,
        subset_seed: int = 0,
        num_workers: int = 2,
    ) -> None:
        self.device, self.batch_size = torch.device(device), batch_size
        total = len(test_set.images) if test_set.images is not None else len(test_set.dataset)  # type: ignore[arg-type]
        if max_images is not None and max_images <= 0:
            raise DfqbenchError(f"max_images must be a positive number of test images, got {max_images}")
        index = None
        if max_images is not None and max_images < total:  # the same images on every call
            perm = torch.randperm(total, generator=torch.Generator().manual_seed(subset_seed))
            index = perm[:max_images].sort().values
        self._num_images = total if index is None else len(index)
        self._mean = torch.tensor(normalization.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(normalization.std, device=self.device).view(1, 3, 1, 1)
        self._loader: DataLoader | None = None
        if test_set.images is not None:
            images, labels = test_set.images, test_set.labels
            if index is not None:
                images, labels = images[index], labels[index]  # type: ignore[index]
            on_device = images.numel() <= 1024**3  # up to 1 GiB of uint8 lives on the device
            self._images = images.to(self.device) if on_device else images
            self._labels = labels.to(self.device)  # type: ignore[union-attr]
        else:
            dataset = test_set.dataset if index is None else Subset(test_set.dataset, index.tolist())
            self._loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                      pin_memory=self.device.type == "cuda")

    @property
    def num_images(self) -> int:
        return self._num_images

    def _batches(self):
        if self._loader is not None:
            for x, y in self._loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            return
        for start in range(0, self._num_images, self.batch_size):
            stop = start + self.batch_size
            yield self._images[start:stop].to(self.device, non_blocking=True), self._labels[start:stop]

    def evaluate(self, model: nn.Module) -> float:
        """Top-1 in percent; runs under inference_mode and leaves the model's train/eval mode to the caller."""
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            for x, y in self._batches():
                x = x.float().div_(255) if x.dtype == torch.uint8 else x.float()
                logits = model(x.sub_(self._mean).div_(self._std))
                correct += (logits.argmax(1) == y).sum()
        return 100.0 * correct.item() / self._num_images
