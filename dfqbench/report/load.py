"""Reading a results folder for reporting: finished records, unfinished folders, and spec filters.

Reads only what runs have written (``runs/*/record.json``, ``spec.json``, ``error.json``,
``metrics.jsonl``); never trains. Safe while a grid is still running: a folder without ``record.json`` is
counted, never raised, by the states of :mod:`dfqbench.launch.state` (running = a live lease, failed, lost,
pending; torch-free), with ``started`` for a pending folder that already has metrics or a checkpoint (a run
outside the launcher, or one interrupted).
A record that cannot be parsed is counted as unreadable.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from dfqbench.errors import DfqbenchError
from dfqbench.launch.state import run_state
from dfqbench.store import RESULTS_ENV, default_results_root
from dfqbench.specs import read_yaml

_METRIC_FIELD = {"best": "best_top1", "final": "final_top1"}


def results_root(path: str | os.PathLike | None) -> Path:
    """``--results`` if given, else ``$DFQBENCH_RESULTS``, else ``./results`` (as for ``dfqbench run``)."""
    return Path(path) if path is not None else default_results_root()


def teacher_key(teacher: dict[str, Any]) -> str:
    """A short identity of the teacher weights: the file's sha256 prefix, else its source."""
    sha = teacher.get("sha256")
    return f"{teacher.get('source', '?')}:{sha[:8]}" if sha else str(teacher.get("source", "?"))


def config_key(spec: dict[str, Any]) -> str:
    """Hash of everything in the spec except the seed (and the run id): records with equal keys are seeds of
    one configuration and may be averaged."""
    rest = {k: v for k, v in spec.items() if k not in ("seed", "run_id", "changed")}
    return hashlib.sha1(json.dumps(rest, sort_keys=True, default=list).encode()).hexdigest()[:12]


@dataclass
class RunRecord:
    """A finished run: its spec and record, with the fields reports group by."""

    path: Path
    record: dict[str, Any]
    _config: str | None = field(default=None, repr=False)

    @property
    def spec(self) -> dict[str, Any]:
        return self.record["spec"]

    @property
    def method(self) -> str:
        return self.spec["method"]

    @property
    def model(self) -> str:
        return self.spec["model"]

    @property
    def bits(self) -> str:
        return self.spec["bits"]

    @property
    def protocol(self) -> str:
        return self.spec.get("protocol", "custom")

    @property
    def teacher(self) -> str:
        return teacher_key(self.spec["teacher"])

    @property
    def fp(self) -> float | None:
        return self.record.get("fp_top1")

    def metric(self, name: str) -> float | None:
        """Top-1 under ``best`` (best over evaluated epochs, as the papers report) or ``final`` (last epoch)."""
        return self.record.get(_METRIC_FIELD[name])

    @property
    def config(self) -> str:
        if self._config is None:
            self._config = config_key(self.spec)
        return self._config


@dataclass
class Unfinished:
    """A run folder without a record: ``running``, ``started``, ``pending``, ``failed`` or ``lost``."""

    path: Path
    state: str
    spec: dict[str, Any] | None
    message: str = ""


@dataclass
class Scan:
    """Everything found under ``<root>/runs``."""

    root: Path
    records: list[RunRecord] = field(default_factory=list)
    unfinished: list[Unfinished] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (file, reason)

    def counts(self) -> dict[str, int]:
        result = {"finished": len(self.records), "running": 0, "started": 0, "pending": 0, "failed": 0}
        for item in self.unfinished:
            result[item.state] = result.get(item.state, 0) + 1
        result["unreadable"] = len(self.unreadable)
        return result

    def status_line(self) -> str:
        """``"12 finished, 2 running under results"``: the finished count always, the others when non-zero."""
        counts = self.counts()
        return ", ".join(f"{v} {k}" for k, v in counts.items() if v or k == "finished") + f" under {self.root}"


def _read_json(path: Path) -> tuple[Any | None, str | None]:
    """(data, None) or (None, why): a missing, half-written or non-JSON file is a reason, not an exception."""
    try:
        return json.loads(path.read_bytes()), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None, f"{type(exc).__name__}: {str(exc)[:80]}"


_RECORD_KEYS = ("spec", "fp_top1", "best_top1", "final_top1")
_SPEC_KEYS = ("method", "model", "bits", "seed", "teacher")


def _valid_record(data: Any) -> str | None:
    if not isinstance(data, dict):
        return "not a JSON object"
    missing = [k for k in _RECORD_KEYS if k not in data]
    if not missing and isinstance(data["spec"], dict):
        missing = [f"spec.{k}" for k in _SPEC_KEYS if k not in data["spec"]]
    return f"missing {', '.join(missing)}" if missing else _wrong_type(data)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and abs(value) != float("inf")


# field -> (check, what it should be), for the fields the report computes with
_RECORD_TYPES: dict[str, tuple[Any, str]] = {
    "spec": (lambda v: isinstance(v, dict), "an object"),
    "fp_top1": (lambda v: v is None or _is_number(v), "a finite number or null"),
    "best_top1": (lambda v: v is None or _is_number(v), "a finite number or null"),
    "final_top1": (lambda v: v is None or _is_number(v), "a finite number or null"),
    "run_id": (lambda v: isinstance(v, str), "a string"),
    "finished_at": (lambda v: isinstance(v, str), "a string"),
    "spec.method": (lambda v: isinstance(v, str), "a string"),
    "spec.model": (lambda v: isinstance(v, str), "a string"),
    "spec.bits": (lambda v: isinstance(v, str), "a string"),
    "spec.seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "spec.teacher": (lambda v: isinstance(v, dict), "an object"),
    "spec.dataset": (lambda v: isinstance(v, str), "a string"),
    "spec.protocol": (lambda v: isinstance(v, str), "a string"),
    "spec.train": (lambda v: isinstance(v, dict), "an object"),
    "spec.method_config": (lambda v: isinstance(v, dict), "an object"),
    "spec.quant": (lambda v: isinstance(v, dict), "an object"),
}


def _wrong_type(data: dict[str, Any]) -> str | None:
    """``"spec.bits is 4 (int), expected a string"`` for the first field of a wrong type (absent optional
    fields are fine), else None."""
    for name, (ok, expected) in _RECORD_TYPES.items():
        node, present = (data["spec"], name[5:] in data["spec"]) if name.startswith("spec.") else (data, name in data)
        if present:
            value = node[name[5:] if name.startswith("spec.") else name]
            if not ok(value):
                return f"{name} is {json.dumps(value)[:40]} ({type(value).__name__}), expected {expected}"
    return None


def _scan_folder(folder: Path, scan: Scan) -> None:
    record_path = folder / "record.json"
    data, why = _read_json(record_path)
    if data is not None:
        why = _valid_record(data)
        if why is None:
            scan.records.append(RunRecord(folder, data))
            return
    if why != "missing":
        scan.unreadable.append((record_path, why or "?"))
        return
    spec, _ = _read_json(folder / "spec.json")
    spec = spec if isinstance(spec, dict) and _wrong_type({"spec": spec}) is None else None  # unusable: no cell
    started = (folder / "metrics.jsonl").exists() or (folder / "checkpoint.pt").exists()
    state = run_state(folder)  # the launcher's lease-aware states, as `dfqbench status` shows them
    name = "started" if state.state == "pending" and started else state.state
    scan.unfinished.append(Unfinished(folder, name, spec, state.reason or ""))


def scan_results(root: str | os.PathLike | None) -> Scan:
    """Read every run folder under ``<root>/runs``; a missing root is a one-line error."""
    root = results_root(root)
    if not root.is_dir():
        raise DfqbenchError(f"results folder '{root}' does not exist; give --results DIR or set {RESULTS_ENV}")
    scan = Scan(root)
    runs = root / "runs"
    if not runs.is_dir():
        return scan
    with os.scandir(runs) as entries:
        folders = sorted(Path(e.path) for e in entries if e.is_dir() and not e.name.startswith("."))
    for folder in folders:
        _scan_folder(folder, scan)
    return scan


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``; lines that do not parse (a half-written tail) are skipped."""
    try:
        text = (folder / "metrics.jsonl").read_text()
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


# -- filters over specs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Where:
    """``KEY=V1,V2``: keep runs whose spec value at the dotted KEY equals one of the values (read as YAML;
    ``KEY=[a, b]`` is one list value)."""

    key: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, text: str) -> "Where":
        key, sep, raw = text.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise DfqbenchError(f"invalid --where {text!r}: expected KEY=VALUE[,VALUE…], e.g. method=gdfq,qimera "
                                "or method.ds_weight=0")
        key = key.strip()
        if key.startswith("method."):  # the override spelling of the spec's method_config section
            key = "method_config." + key[len("method."):]
        values = []
        parts = [raw] if raw.strip().startswith("[") else raw.split(",")  # a YAML list is one value
        for part in parts:
            try:
                values.append(read_yaml(part))
            except yaml.YAMLError:
                values.append(part)
        return cls(key, tuple(values))

    def lookup(self, spec: dict[str, Any]) -> tuple[bool, Any]:
        node: Any = spec
        for part in self.key.split("."):
            if not isinstance(node, dict) or part not in node:
                return False, None
            node = node[part]
        return True, node

    def matches(self, spec: dict[str, Any] | None) -> bool:
        if spec is None:
            return False
        found, value = self.lookup(spec)
        if not found:
            return False
        return any(_equal(value, wanted) for wanted in self.values)


def _equal(value: Any, wanted: Any) -> bool:
    if isinstance(value, (list, tuple)) and isinstance(wanted, (list, tuple)):
        return list(value) == list(wanted)
    if isinstance(value, bool) or isinstance(wanted, bool):
        return value is wanted
    if isinstance(value, (int, float)) and isinstance(wanted, (int, float)):
        return float(value) == float(wanted)
    return str(value) == str(wanted)


def filter_scan(scan: Scan, wheres: Iterable[Where] = (), run_ids: set[str] | None = None) -> Scan:
    """Keep the runs matching every ``Where`` (and, if given, whose run id is in ``run_ids``).

    A key that no spec in the folder has is an error naming the keys that exist (a typo would otherwise
    silently empty the report). Unfinished folders without a readable spec are kept only when unfiltered.
    """
    wheres = list(wheres)
    specs = [r.spec for r in scan.records] + [u.spec for u in scan.unfinished if u.spec is not None]
    for where in wheres:
        if specs and not any(where.lookup(s)[0] for s in specs):
            from dfqbench.registry import unknown_choice

            def named(k: str) -> str:  # the override spelling (method.X for method_config.X)
                return "method." + k[len("method_config."):] if k.startswith("method_config.") else k

            raise DfqbenchError(unknown_choice("--where key", named(where.key), sorted(named(k) for k in flatten(specs[0]))))

    def keep(spec: dict[str, Any] | None) -> bool:
        if spec is None:
            return not wheres and run_ids is None
        if run_ids is not None and spec.get("run_id") not in run_ids:
            return False
        return all(w.matches(spec) for w in wheres)

    return Scan(scan.root, [r for r in scan.records if keep(r.spec)], [u for u in scan.unfinished if keep(u.spec)],
                list(scan.unreadable))


def flatten(spec: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested spec as ``{"dotted.key": value}`` (the keys --where and the footnotes name)."""
    out: dict[str, Any] = {}
    for key, value in spec.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
