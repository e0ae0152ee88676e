"""The model zoo: pytorchcv architectures, local or downloaded pretrained weights (as in the official codes).

Weights are resolved in this order: an explicit file (``weights`` or ``DFQBENCH_WEIGHTS``), a folder
(``weights_dir`` or ``DFQBENCH_WEIGHTS_DIR``) holding ``<name>.pth`` or pytorchcv's
``<name>-NNNN-<sha1[:8]>.pth``, else pytorchcv's own download (cache ``~/.torch/models``).
``tiny_cifar10`` ignores the environment variables (so the test suite can run with them set).
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import functools
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dfqbench.errors import DfqbenchError
from dfqbench.zoo import tiny
from dfqbench.zoo.normalization import NORMALIZATIONS, Normalization

ENV_WEIGHTS = "DFQBENCH_WEIGHTS"
ENV_WEIGHTS_DIR = "DFQBENCH_WEIGHTS_DIR"
ENV_WEIGHTS_NORM = "DFQBENCH_WEIGHTS_NORM"
TINY_NAME = "tiny_cifar10"
PYTORCHCV_CACHE = Path("~", ".torch", "models")  # where pytorchcv's get_model(pretrained=True) stores files


@dataclass(frozen=True)
class ModelInfo:
    """What a model expects: its dataset, classes, input size and the papers' evaluation normalisation."""

    name: str
    dataset: str  # "cifar10" | "cifar100" | "imagenet" | "tiny"
    num_classes: int
    input_size: int
    normalization: Normalization
    crop_fraction: float = 0.875  # ImageNet eval: resize to input_size / crop_fraction, centre-crop input_size


_IMAGENET, _C10, _C100 = NORMALIZATIONS["imagenet"], NORMALIZATIONS["cifar10"], NORMALIZATIONS["cifar100"]
KNOWN_MODELS: dict[str, ModelInfo] = {
    "resnet20_cifar10": ModelInfo("resnet20_cifar10", "cifar10", 10, 32, _C10),
    "resnet20_cifar100": ModelInfo("resnet20_cifar100", "cifar100", 100, 32, _C100),
    "resnet18": ModelInfo("resnet18", "imagenet", 1000, 224, _IMAGENET),
    "resnet50": ModelInfo("resnet50", "imagenet", 1000, 224, _IMAGENET),
    "mobilenetv2_w1": ModelInfo("mobilenetv2_w1", "imagenet", 1000, 224, _IMAGENET),
    TINY_NAME: ModelInfo(TINY_NAME, "tiny", tiny.TINY_NUM_CLASSES, tiny.TINY_INPUT_SIZE, _IMAGENET),
}
_UNSUPPORTED_SUFFIXES = ("svhn", "cub", "voc", "coco", "ade20k", "cityscapes", "celebamaskhq")


@functools.lru_cache(maxsize=1)
def _pytorchcv_names() -> frozenset[str]:
    from pytorchcv.model_provider import _models

    return frozenset(_models)


@functools.lru_cache(maxsize=1)
def _pytorchcv_metainfo() -> dict[str, dict[str, str]]:
    """pytorchcv's ``model_metainfos.csv`` rows by model name (only models with pretrained weights)."""
    from pytorchcv.models.common import model_store

    with open(model_store.get_model_metainfos_file_path(), encoding="utf-8") as f:
        return {row["model_name"]: row for row in csv.DictReader(f)}


def pytorchcv_file(name: str) -> Path | None:
    """Where pytorchcv's ``get_model(name, pretrained=True)`` stores its weights (None: no pretrained weights)."""
    meta = _pytorchcv_metainfo().get(name)
    if meta is None:
        return None
    return PYTORCHCV_CACHE.expanduser() / f"{name}-{meta['error_value']}-{meta['checksum'][:8]}.pth"


def model_info(name: str) -> ModelInfo:
    """Info for a known model or any pytorchcv classifier (CIFAR-10/100 by suffix, else ImageNet)."""
    key = str(name).strip().lower()
    if key in KNOWN_MODELS:
        return KNOWN_MODELS[key]
    if key not in _pytorchcv_names():
        close = suggest_models(key)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ";"
        raise DfqbenchError(
            f"unknown model {name!r}{hint} choices: {', '.join(sorted(KNOWN_MODELS))}, "
            "or any pytorchcv model name (see pytorchcv.model_provider._models)"
        )
    meta = _pytorchcv_metainfo().get(key, {})
    suffix = key.rsplit("_", 1)[-1]
    if suffix == "cifar10":
        return ModelInfo(key, "cifar10", 10, 32, _C10)
    if suffix == "cifar100":
        return ModelInfo(key, "cifar100", 100, 32, _C100)
    if suffix in _UNSUPPORTED_SUFFIXES or meta.get("test_dataset", "in1k") not in ("in1k", "cf"):
        raise DfqbenchError(
            f"model {key!r} is not an ImageNet/CIFAR classifier (dataset {meta.get('test_dataset', suffix)!r}); "
            "dfqbench supports cifar10 and cifar100 (pytorchcv names ending _cifar10/_cifar100) and imagenet"
        )
    size = int(meta["img_size"]) if meta.get("img_size", "NA") != "NA" else 224
    scale = float(meta["img_scale"]) if meta.get("img_scale", "NA") != "NA" else 0.875
    return ModelInfo(key, "imagenet", 1000, size, _IMAGENET, scale)


def suggest_models(key: str, limit: int = 2) -> list[str]:
    """Names to suggest for an unknown model: the zoo's own names first (those starting with ``key``, then
    those containing it), then the closest spelling among all names, a zoo name winning near-ties; so
    ``resnet20`` suggests ``resnet20_cifar10`` rather than pytorchcv's ``resnet200``."""
    zoo = list(KNOWN_MODELS)
    for found in ([n for n in zoo if n.startswith(key)], [n for n in zoo if key and key in n]):
        if found:
            return found[:limit]
    close = difflib.get_close_matches(key, sorted(_pytorchcv_names() | set(zoo)), n=8)
    score = lambda n: difflib.SequenceMatcher(None, key, n).ratio() + (0.05 if n in zoo else 0.0)  # noqa: E731
    return sorted(close, key=score, reverse=True)[:1]


def build_model(name: str) -> nn.Module:
    """The architecture only, randomly initialised (``pretrained=False``)."""
    info = model_info(name)
    if info.name == TINY_NAME:
        return tiny.TinyNet(info.num_classes)
    from pytorchcv import model_provider

    return model_provider.get_model(info.name, pretrained=False)


def _hint(name: str) -> str:
    return (
        f"give an existing file with --weights FILE (or {ENV_WEIGHTS}), or a folder holding {name}.pth "
        f"with --weights-dir DIR (or {ENV_WEIGHTS_DIR})"
    )


def resolve_weights_file(name: str, weights: str | None, weights_dir: str | None) -> Path | None:
    """The local weights file to load, or None for pytorchcv's download (or tiny's built-in weights)."""
    info = model_info(name)
    use_env = info.name != TINY_NAME
    file_text, origin = weights, "--weights"
    if file_text is None and use_env and os.environ.get(ENV_WEIGHTS):
        file_text, origin = os.environ[ENV_WEIGHTS], ENV_WEIGHTS
    if file_text is not None:
        path = Path(file_text).expanduser()
        if not path.is_file() or not os.access(path, os.R_OK):
            what = "not found" if not path.exists() else "not a readable file"
            raise DfqbenchError(f"weights file '{path}' (from {origin}) {what}; {_hint(info.name)}")
        return path
    dir_text, origin = weights_dir, "--weights-dir"
    if dir_text is None and use_env and os.environ.get(ENV_WEIGHTS_DIR):
        dir_text, origin = os.environ[ENV_WEIGHTS_DIR], ENV_WEIGHTS_DIR
    if dir_text is None:
        return None
    folder = Path(dir_text).expanduser()
    if not folder.is_dir():
        raise DfqbenchError(f"weights folder '{folder}' (from {origin}) not found; {_hint(info.name)}")
    return _find_in_folder(info.name, folder, origin)


def _find_in_folder(name: str, folder: Path, origin: str) -> Path:
    plain = folder / f"{name}.pth"
    if plain.is_file():
        return plain
    pattern = re.compile(re.escape(name) + r"-\d+-[0-9a-f]+\.pth")
    found = sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name) and p.is_file())
    meta = _pytorchcv_metainfo().get(name) if name != TINY_NAME else None
    if meta is not None:  # prefer the file this pytorchcv version would download
        current = folder / f"{name}-{meta['error_value']}-{meta['checksum'][:8]}.pth"
        if current in found:
            return current
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found)
        raise DfqbenchError(f"several weights for {name!r} in '{folder}' ({names}); pick one with --weights FILE")
    raise DfqbenchError(
        f"no weights for {name!r} in folder '{folder}' (from {origin}; expected {name}.pth or pytorchcv's "
        f"{name}-NNNN-<hash>.pth); {_hint(name)}"
    )


def _read_state(path: Path, name: str) -> dict[str, torch.Tensor]:
    """A state_dict file's tensors (plain, or under "state_dict"; "module." stripped), read with weights_only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors, truncated zips, full pickled modules ...
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise DfqbenchError(f"cannot read weights file '{path}' as a state_dict ({reason}); {_hint(name)}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DfqbenchError(f"weights file '{path}' does not hold a state_dict of tensors for model {name!r}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _misfit(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str | None:
    """Why ``state`` does not load into a model whose state_dict is ``own`` (keys and shapes), or None."""
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if not (missing or extra or shapes):
        return None
    parts = [f"{len(missing)} missing keys (e.g. {missing[0]!r})" if missing else "",
             f"{len(extra)} unexpected keys (e.g. {extra[0]!r})" if extra else "",
             f"{len(shapes)} shape mismatches (e.g. {shapes[0]!r}: file {list(state[shapes[0]].shape)} "
             f"vs model {list(own[shapes[0]].shape)})" if shapes else ""]
    return ", ".join(p for p in parts if p)


def _non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The first floating-point tensor holding NaN or infinity, described, or None when all are finite."""
    for key, value in state.items():
        if value.is_floating_point() or value.is_complex():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                return f"{key!r} ({bad} of {value.numel()} values NaN or infinite)"
    return None


def check_finite_weights(state: dict[str, torch.Tensor], source: str, name: str) -> None:
    bad = _non_finite(state)
    if bad:
        raise DfqbenchError(f"teacher {name!r} from {source} has non-finite weights: {bad}; "
                            "the teacher's weights must be finite (re-export or re-download them)")


def _load_file(model: nn.Module, path: Path, name: str) -> None:
    """Load a state_dict file with strict=True; its shapes must fit and its values be finite."""
    state = _read_state(path, name)
    reason = _misfit(state, model.state_dict())
    if reason:
        raise DfqbenchError(f"weights file '{path}' does not fit model {name!r}: {reason}")
    check_finite_weights(state, f"'{path}'", name)
    model.load_state_dict(state, strict=True)


@functools.lru_cache(maxsize=32)
def _meta_state(name: str) -> dict[str, torch.Tensor]:
    """``name``'s state_dict shapes, from a model built on the meta device (no memory, no initialisation)."""
    with torch.device("meta"):
        return build_model(name).state_dict()


@functools.lru_cache(maxsize=16)
def _file_fit(path: str, size: int, mtime_ns: int, name: str) -> tuple[str | None, str | None, str | None]:
    """(why the file does not fit ``name``, the zoo model it fits instead, why no model can use it: unreadable
    or non-finite), each None when not the case; reads the file once per (path, size, mtime, model)."""
    try:
        state = _read_state(Path(path), name)
        check_finite_weights(state, f"'{path}'", name)
    except DfqbenchError as exc:
        return None, None, str(exc)
    reason = _misfit(state, _meta_state(name))
    if reason is None:
        return None, None, None
    fits = next((m for m in KNOWN_MODELS if m != name and _misfit(state, _meta_state(m)) is None), None)
    return reason, fits, None


def single_file_misfit(name: str, weights: str | None) -> str | None:
    """Whether a single weights file (``weights`` or ``DFQBENCH_WEIGHTS``) is for another model than ``name``.

    One file holds one model's weights. A grid that spans several models with one file set (e.g. the
    offline ``DFQBENCH_WEIGHTS=resnet20_cifar10.pth`` over ``paper_table1``) has no teacher for the other
    models: this returns the reason to skip their cells (``"no weights for resnet18 (DFQBENCH_WEIGHTS is for
    resnet20_cifar10: …)"``), or None when no single file is set or it fits. The match is decided by loading
    the file's state_dict (once per file, size and mtime) and comparing its keys and tensor shapes with the
    model's, not by the file name. Raises DfqbenchError for an unreadable file or non-finite weights.
    """
    info = model_info(name)
    text, origin = weights, "--weights"
    if text is None and info.name != TINY_NAME and os.environ.get(ENV_WEIGHTS):
        text, origin = os.environ[ENV_WEIGHTS], ENV_WEIGHTS
    if text is None:
        return None
    path = Path(text).expanduser()
    try:
        stat = path.stat()
    except OSError:
        return None  # missing: resolve_weights_file says so, as an invalid cell
    reason, fits, unusable = _file_fit(str(path.resolve()), stat.st_size, stat.st_mtime_ns, info.name)
    if unusable:
        raise DfqbenchError(unusable)
    if reason is None:
        return None
    owner = f"is for {fits}" if fits else f"does not fit it: {reason}"
    return f"no weights for {info.name} ({origin} '{path.name}' {owner})"


def _download(name: str) -> nn.Module:
    """pytorchcv's own ``get_model(name, pretrained=True)``, its download chatter silenced."""
    from pytorchcv import model_provider

    fix = f"give local weights with --weights FILE (or {ENV_WEIGHTS}) or --weights-dir DIR (or {ENV_WEIGHTS_DIR})"
    if _pytorchcv_metainfo().get(name) is None:
        raise DfqbenchError(f"pytorchcv has no pretrained weights for {name!r}; {fix}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return model_provider.get_model(name, pretrained=True)
    except Exception as exc:  # requests/urllib errors are OSErrors; also bad zips, hash mismatches
        raise DfqbenchError(
            f"cannot download pretrained {name!r} from pytorchcv (offline? {type(exc).__name__}); {fix}"
        ) from exc


def pretrained_model(name: str, path: Path | None) -> nn.Module:
    """The architecture ``name`` with its pretrained weights: the local file ``path`` (which must fit it and be
    finite; :func:`resolve_weights_file`), else tiny's built-in weights, else pytorchcv's download."""
    if path is not None:
        model = build_model(name)
        _load_file(model, path, name)
        return model
    if name == TINY_NAME:
        return tiny.build_tiny(seed=0)
    return _download(name)
