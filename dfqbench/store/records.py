"""``record.json``: a finished run's results as a typed, versioned :class:`RunRecord`.

Read and written only through :class:`dfqbench.store.layout.RunFolder`. Reading checks the schema version and
the type of every field it names; a file that is not JSON, misses a required field, holds a field of the
wrong type or comes from a newer schema is a :class:`RecordError` (a one-line error naming the file and the
field), never a ``TypeError`` further on. Keys this version does not name (the engine's details:
``cuda_graphs``, ``graphs_captured``, …) are kept in :attr:`RunRecord.extra` and written back as they were.

Schema versions: 1 — the fields below; records written before the ``schema_version`` key existed hold the same
fields and are read as version 1. ``code`` (the stamp of the method code that computed the run,
:mod:`dfqbench.store.codestamp`) is optional within version 1: records written before it existed read with
``code == {}`` (their code is "unknown", never "stale"), and an older dfqbench keeps it as an extra key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfqbench.store.files import StoreError, parse_json, restart_hint

RECORD_VERSION = 1
REQUIRED = ("spec", "fp_top1", "best_top1", "final_top1")  # in this order in "missing …" messages
SPEC_REQUIRED = {"method": str, "model": str, "bits": str, "seed": int, "teacher": dict}


class RecordError(StoreError):
    """An unreadable ``record.json``; ``reason`` is the short why (``missing fp_top1``, ``field …``)."""

    def __init__(self, path: Path | None, reason: str, hint: bool = True) -> None:
        self.path, self.reason = path, reason
        where = f"'{path}'" if path is not None else "record"
        tail = f"; {restart_hint(path.parent)}" if hint and path is not None else ""
        super().__init__(f"unreadable record {where} ({reason}){tail}")


@dataclass(frozen=True)
class RunRecord:
    """A finished run (see "What a run records" in docs/results-and-reports.md)."""

    spec: dict[str, Any]
    fp_top1: float | None
    best_top1: float | None
    final_top1: float | None
    run_id: str | None = None
    run_name: str | None = None
    calibrated_top1: float | None = None
    best_epoch: int | None = None
    top1_per_epoch: dict[str, float | None] = field(default_factory=dict)
    epochs: int | None = None
    iterations: int | None = None
    images_generated: int | None = None
    wall_time_s: float | None = None
    sessions: int | None = None
    device: str | None = None
    engine: str | None = None
    compile_s: float | None = None
    diverged: str | None = None
    git: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    code: dict[str, Any] = field(default_factory=dict)  # the method code's stamp (dfqbench.store.codestamp)
    finished_at: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = RECORD_VERSION

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``extra``'s keys at the top level, as they were read)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **data}

    @classmethod
    def from_dict(cls, data: Any, path: Path | None = None) -> "RunRecord":
        """Validate ``data`` (parsed JSON) into a record; :class:`RecordError` naming the first bad field."""
        if not isinstance(data, dict):
            raise RecordError(path, f"not a JSON object but {_kind(data)}")
        version = data.get("schema_version", 1)
        if not _is_int(version) or version < 1:
            raise RecordError(path, f"field schema_version is {_show(version)}, expected an integer >= 1")
        if version > RECORD_VERSION:
            raise RecordError(path, f"schema_version {version} is newer than this dfqbench reads (up to "
                                    f"{RECORD_VERSION}); upgrade dfqbench to read it", hint=False)
        missing = [k for k in REQUIRED if k not in data]
        if not missing and isinstance(data["spec"], dict):
            missing = [f"spec.{k}" for k in SPEC_REQUIRED if k not in data["spec"]]
        if missing:
            raise RecordError(path, f"missing {', '.join(missing)}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        for name in (n for n in _TYPES if n in data):  # in a fixed order: the first bad field is named
            problem = _check(name, data[name])
            if problem:
                raise RecordError(path, problem)
        values = {k: v for k, v in data.items() if k in known}
        values["schema_version"] = RECORD_VERSION
        values.setdefault("run_id", data["spec"].get("run_id"))
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})

    @classmethod
    def read(cls, path: Path) -> "RunRecord":
        """Read and validate ``path`` (which must exist: ``FileNotFoundError`` otherwise)."""
        try:
            data = parse_json(path.read_bytes())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise RecordError(path, f"{type(exc).__name__}: {str(exc)[:80]}") from None
        return cls.from_dict(data, path)


# -- field types -----------------------------------------------------------------------------------------
_NUMBER = ("number", lambda v: _is_real(v))
_INT = ("integer", lambda v: _is_int(v))
_STR = ("string", lambda v: isinstance(v, str))
_DICT = ("object", lambda v: isinstance(v, dict))
_TYPES: dict[str, tuple[tuple[str, Any], bool]] = {  # field → (type, null allowed)
    "spec": (_DICT, False), "fp_top1": (_NUMBER, True), "best_top1": (_NUMBER, True),
    "final_top1": (_NUMBER, True), "run_id": (_STR, True), "run_name": (_STR, True),
    "calibrated_top1": (_NUMBER, True), "best_epoch": (_INT, True), "top1_per_epoch": (_DICT, False),
    "epochs": (_INT, True), "iterations": (_INT, True), "images_generated": (_INT, True),
    "wall_time_s": (_NUMBER, True), "sessions": (_INT, True), "device": (_STR, True), "engine": (_STR, True),
    "compile_s": (_NUMBER, True), "diverged": (_STR, True), "git": (_DICT, False), "versions": (_DICT, False),
    "code": (_DICT, False),
    "finished_at": (_STR, True), "schema_version": (_INT, False),
}


def _check(name: str, value: Any) -> str | None:
    (kind, ok), nullable = _TYPES[name]
    if not ((value is None and nullable) or (value is not None and ok(value))):
        return f"field {name} is {_show(value)}, expected {kind}{' or null' if nullable else ''}"
    if name == "spec":
        for key, typ in SPEC_REQUIRED.items():
            if not (_is_int(value[key]) if typ is int else isinstance(value[key], typ)):
                return f"field spec.{key} is {_show(value[key])}, expected {_TYPE_NAMES[typ]}"
    if name == "top1_per_epoch":
        for epoch, top1 in value.items():
            if not (_is_int_text(epoch) and (top1 is None or _is_real(top1))):
                return f"field top1_per_epoch[{epoch!r}] is {_show(top1)}, expected epoch: number or null"
    return None


_TYPE_NAMES = {str: "string", int: "integer", dict: "object"}


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_text(text: str) -> bool:
    return text.lstrip("-").isdigit()


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


def _show(value: Any) -> str:
    text = json.dumps(value, default=str)
    return f"{_kind(value)} {text[:40]}" if value is not None else "null"
