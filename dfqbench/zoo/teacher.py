"""The teacher: which one a run uses (its identity, computed without loading the weights) and loading it.

One function, :func:`teacher_identity`, is used both when a run loads its teacher (:func:`load_pretrained`)
and when a grid is planned (hundreds of cells, no model built), so the two can never disagree. The identity is

* ``{"source": "file", "sha256": …}`` for a local weights file (``--weights``/``--weights-dir`` or env);
* ``tiny.TEACHER_ID`` for the tiny test model's built-in weights (fitted at build time);
* ``{"source": "pytorchcv", "pytorchcv": <version>, "file": …, "sha256": …}`` for pytorchcv's download,
  or None while that file is not downloaded yet (its hash is unknown until it is).

The normalisation the teacher is evaluated with is part of it (local files may say theirs with
``--weights-norm``/``DFQBENCH_WEIGHTS_NORM``). File hashes are cached by path, size and modification time.
Which models exist and where their weights files are is :mod:`dfqbench.zoo.models`'s.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

from torch import nn

from dfqbench.errors import DfqbenchError
from dfqbench.zoo import tiny
from dfqbench.zoo.models import (ENV_WEIGHTS, ENV_WEIGHTS_NORM, TINY_NAME, ModelInfo, check_finite_weights,
                                 model_info, pretrained_model, pytorchcv_file, resolve_weights_file)
from dfqbench.zoo.normalization import Normalization, parse_normalization


@dataclass(frozen=True)
class Teacher:
    """The teacher's identity (None: a pytorchcv download not made yet), the normalisation it is evaluated
    with, and the weights file the identity was (or will be) read from, if any."""

    teacher_id: dict[str, Any] | None
    normalization: Normalization
    file: str | None = None


@functools.lru_cache(maxsize=1 << 16)  # teacher files, and a real-data bank's chosen images (zoo.train_data)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """The file's sha256, computed once per (path, size, modification time)."""
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def teacher_identity(model: str, weights: str | None = None, weights_dir: str | None = None,
                     weights_norm: str | None = None) -> Teacher:
    """The identity and normalisation of the teacher that ``load_pretrained`` with these arguments loads.

    Raises DfqbenchError for what loading would reject up front (unknown model, missing weights file or
    folder, a bad normalisation); never reads the weights beyond hashing the file.
    """
    info = model_info(model)
    path = resolve_weights_file(info.name, weights, weights_dir)
    normalization = info.normalization
    if path is not None:
        norm_text = weights_norm
        if norm_text is None and info.name != TINY_NAME:
            norm_text = os.environ.get(ENV_WEIGHTS_NORM) or None
        if norm_text is not None:
            normalization = parse_normalization(norm_text)
        return Teacher({"source": "file", "sha256": file_sha256(path)}, normalization, str(path))
    if info.name == TINY_NAME:
        return Teacher(dict(tiny.TEACHER_ID), normalization)
    cached = pytorchcv_file(info.name)
    if cached is None or not cached.is_file():
        return Teacher(None, normalization, None if cached is None else str(cached))
    teacher_id = {"source": "pytorchcv", "pytorchcv": version("pytorchcv"), "file": cached.name,
                  "sha256": file_sha256(cached)}
    return Teacher(teacher_id, normalization, str(cached))


@dataclass
class LoadedModel:
    """A frozen teacher (eval mode, no grads), its info, the normalisation to evaluate with, its identity."""

    model: nn.Module
    info: ModelInfo
    normalization: Normalization
    teacher_id: dict = field(default_factory=dict)


def load_pretrained(
    name: str, weights: str | None = None, weights_dir: str | None = None, weights_norm: str | None = None
) -> LoadedModel:
    """A frozen pretrained teacher; ``weights_norm`` (or env) applies only to local weights files. Its
    identity comes from :func:`teacher_identity`, as when a grid is planned."""
    info = model_info(name)
    path = resolve_weights_file(info.name, weights, weights_dir)
    model = pretrained_model(info.name, path)
    teacher = teacher_identity(info.name, weights, weights_dir, weights_norm)
    if teacher.teacher_id is None:  # downloaded, but not where pytorchcv's metadata says: nothing to hash
        raise DfqbenchError(f"pytorchcv downloaded {info.name!r} but its file {teacher.file} is missing; "
                            f"give local weights with --weights FILE (or {ENV_WEIGHTS})")
    if path is None and info.name != TINY_NAME:  # a local file was checked when it was read
        check_finite_weights(model.state_dict(), f"pytorchcv ({teacher.teacher_id['file']})", info.name)
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return LoadedModel(model, info, teacher.normalization, teacher.teacher_id)
