"""Predict a run's :class:`RunSpec` (hence its run id and folder) without building or loading any model.

The run id hashes the teacher's identity, which :func:`dfqbench.zoo.load_pretrained` computes while loading
the weights. Planning a grid of hundreds of runs must not load hundreds of models, so this module mirrors
``runner.prepare`` step by step but only hashes the weights file (once per file, cached by path, size and
mtime). ``tests/test_grids.py`` checks that the prediction equals ``prepare(request).spec`` for the
builtin tiny teacher and for a weights file, and every task checks it again at run time.

A pytorchcv teacher that is not downloaded yet has no file to hash: its id is unknown (None) until
:func:`fetch_teacher` downloads it, which `dfqbench run --grid` does once per model before launching.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from dfqbench.core.plugin import Method
from dfqbench.runner import RunRequest, resolve_settings
from dfqbench.specs import RunSpec
from dfqbench.zoo import load_pretrained, model_info, parse_normalization, resolve_weights_file
from dfqbench.zoo import models as zoo_models


@dataclass(frozen=True)
class Teacher:
    """What the run id needs from the teacher: its identity (None: not downloaded yet) and normalisation,
    and the weights file the identity was (or will be) read from, if any (the plan cache watches it)."""

    teacher_id: dict[str, Any] | None
    normalization: dict[str, Any]
    file: str | None = None


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


def _pytorchcv_file(name: str) -> Path | None:
    meta = zoo_models._pytorchcv_metainfo().get(name)
    if meta is None:
        return None
    return zoo_models.PYTORCHCV_CACHE.expanduser() / f"{name}-{meta['error_value']}-{meta['checksum'][:8]}.pth"


def teacher_for(request: RunRequest) -> Teacher:
    """The teacher identity ``load_pretrained`` would give, without loading it (mirrors zoo.models)."""
    info = model_info(request.model)
    path = resolve_weights_file(info.name, request.weights, request.weights_dir)
    normalization = info.normalization
    if path is not None:
        norm_text = request.weights_norm
        if norm_text is None and info.name != zoo_models.TINY_NAME:
            norm_text = os.environ.get(zoo_models.ENV_WEIGHTS_NORM) or None
        if norm_text is not None:
            normalization = parse_normalization(norm_text)
        return Teacher({"source": "file", "sha256": file_sha256(path)}, dataclasses.asdict(normalization), str(path))
    if info.name == zoo_models.TINY_NAME:
        return Teacher(dict(zoo_models.tiny.TEACHER_ID), dataclasses.asdict(normalization))
    cached = _pytorchcv_file(info.name)
    if cached is None or not cached.is_file():
        return Teacher(None, dataclasses.asdict(normalization), None if cached is None else str(cached))
    teacher_id = {"source": "pytorchcv", "pytorchcv": version("pytorchcv"), "file": cached.name,
                  "sha256": file_sha256(cached)}
    return Teacher(teacher_id, dataclasses.asdict(normalization), str(cached))


def fetch_teacher(request: RunRequest) -> None:
    """Download a pytorchcv teacher into its cache (raises DfqbenchError offline, with the fix)."""
    load_pretrained(request.model, request.weights, request.weights_dir, request.weights_norm)


def settings_for(method_cls: type[Method], request: RunRequest) -> tuple[dict, dict, dict]:
    """The resolved (train, method, quant) sections, exactly as ``runner.prepare`` resolves them."""
    info = model_info(request.model)
    return resolve_settings(method_cls, info.dataset, info.name, request.bits.lower(), request.protocol,
                            request.overrides)


def spec_for(method_cls: type[Method], request: RunRequest, settings: tuple[dict, dict, dict],
             teacher: Teacher) -> RunSpec | None:
    """The spec ``runner.prepare(request)`` will build, or None while the teacher id is unknown."""
    if teacher.teacher_id is None:
        return None
    info = model_info(request.model)
    train, method_config, quant = settings
    return RunSpec(
        method=method_cls.name, method_version=method_cls.version, model=info.name, dataset=info.dataset,
        bits=request.bits.lower(), seed=request.seed, teacher=teacher.teacher_id,
        normalization=teacher.normalization, quant=quant, train=train, method_config=method_config,
        protocol=request.protocol,
    )


def predict_spec(request: RunRequest) -> RunSpec | None:
    """:func:`spec_for` from a request alone (raises DfqbenchError for what ``prepare`` would reject)."""
    from dfqbench.core.plugin import load_methods

    method_cls = load_methods().get(request.method)
    return spec_for(method_cls, request, settings_for(method_cls, request), teacher_for(request))
