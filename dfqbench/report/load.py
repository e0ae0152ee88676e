"""Reading a results folder for reporting: finished records, unfinished folders, and spec filters.

Reads only what runs have written, through :mod:`dfqbench.store` (records, specs, metrics, run states; torch-
free); never trains. Safe while a grid is still running: a folder without ``record.json`` is counted, never
raised, by the store's run states (running = a live lease, failed, lost, pending), with ``started`` for a
pending folder that already has metrics or a checkpoint (a run outside the launcher, or one interrupted).
A record that does not read as a valid :class:`dfqbench.store.RunRecord` is counted as unreadable.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dfqbench.errors import DfqbenchError
from dfqbench.store import RESULTS_ENV, RecordError, ResultsStore, RunFolder, results_root, run_state
from dfqbench.store import RunRecord as StoredRecord  # the typed record.json (this module has its own RunRecord)
from dfqbench.store.files import parse_json
from dfqbench.specs import read_flag_value

_METRIC_FIELD = {"best": "best_top1", "final": "final_top1"}



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


def _scan_folder(folder: RunFolder, scan: Scan) -> None:
    try:
        stored = folder.read_record()
    except RecordError as exc:
        scan.unreadable.append((folder.record_path, exc.reason))
        return
    if stored is not None:
        scan.records.append(RunRecord(folder.path, stored.to_dict()))
        return
    started = folder.metrics_path.exists() or folder.checkpoint_path.exists()
    state = run_state(folder)  # the launcher's lease-aware states, as `dfqbench status` shows them
    name = "started" if state.state == "pending" and started else state.state
    scan.unfinished.append(Unfinished(folder.path, name, _usable_spec(folder.read_spec()), state.reason or ""))


def _usable_spec(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    """An unfinished run's spec if the fields cells group by have their types (else it is counted in no cell)."""
    if spec is None:
        return None
    try:
        StoredRecord.from_dict({"spec": spec, "fp_top1": None, "best_top1": None, "final_top1": None})
    except RecordError:
        return None
    return spec


def scan_results(root: str | os.PathLike | None) -> Scan:
    """Read every run folder under ``<root>/runs``; a missing root is a one-line error."""
    root = results_root(root)
    store = ResultsStore(root)
    store.check(write=False)  # a file: one line
    if not root.is_dir():
        raise DfqbenchError(f"results folder '{root}' does not exist; give --results DIR or set {RESULTS_ENV}")
    scan = Scan(root)
    for folder in store.runs():
        _scan_folder(folder, scan)
    return scan


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``; lines that do not parse (a half-written tail) are skipped (a report
    shows what it can; resuming a run refuses such a file, :meth:`dfqbench.store.RunFolder.read_metrics`)."""
    try:
        text = RunFolder(folder).metrics_path.read_text()
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = parse_json(line)
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
            values.append(read_flag_value(f"--where {key}", part))
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
        return any(equal_values(value, wanted) for wanted in self.values)


def equal_values(value: Any, wanted: Any) -> bool:
    """A spec value equals a value read from the command line (numbers by value, booleans by identity, lists
    item by item, anything else as text)."""
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
