"""The papers' published numbers (package data ``published.yaml``), parsed into lookup tables.

``published.yaml`` keeps every row of a paper's table (each table's ``source`` names the paper and table) as
one markdown line, so the transcription can be checked line by line; this module parses those lines:
``75.11†`` → 75.11 with the mark ``†``, ``91.26 ± 0.49`` → mean and std, ``0.10 (did not converge)`` → 0.10
with a note, ``-`` → absent.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import yaml

ABLATION_TERMS = ("ds", "as", "b", "bns")  # column order of AdaSG Table 2: L_ds, L_as, L_b, L_BNS

_VALUE = re.compile(r"^(?P<mean>\d+(?:\.\d+)?)\s*(?:±\s*(?P<std>\d+(?:\.\d+)?))?\s*(?P<mark>†)?\s*(?:\((?P<note>[^)]*)\))?$")
_MODEL_FP = re.compile(r"^(?P<name>.+?)\s*\((?P<fp>\d+(?:\.\d+)?)\)$")


@dataclass(frozen=True)
class PublishedValue:
    """One printed number: its mean, the std when printed (mean ± std), the † mark and a printed note."""

    mean: float
    std: float | None = None
    mark: str = ""
    note: str = ""


@dataclass
class PublishedRow:
    dataset: str  # as printed, e.g. "CIFAR-10"
    model_label: str  # as printed, e.g. "ResNet-20"
    model: str  # dfqbench zoo name
    bits: str  # lower case, e.g. "w4a4"
    fp: float
    values: dict[str, PublishedValue | None]  # printed column → value (None for "-")


@dataclass
class PublishedTable:
    """A main results table: rows dataset / model (FP) / bits, one column per printed method."""

    name: str
    title: str
    source: str
    columns: list[str]  # printed method columns, in the paper's order
    method_of: dict[str, str]  # printed column → dfqbench method (published-only columns are absent)
    rows: list[PublishedRow]
    notes: list[str] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)  # printed column → why it can have no method

    def row(self, model: str, bits: str) -> PublishedRow | None:
        return next((r for r in self.rows if r.model == model and r.bits == bits), None)

    def column_of(self, method: str) -> str | None:
        return next((c for c in self.columns if self.method_of.get(c) == method), None)


@dataclass
class PublishedAblation:
    """A generator-loss ablation: rows = (L_ds, L_as, L_b, L_BNS) on/off, columns = bit-widths."""

    name: str
    title: str
    source: str
    method: str
    model: str
    fp: float
    bits: list[str]
    rows: list[tuple[tuple[bool, ...], dict[str, PublishedValue | None]]]
    notes: list[str] = field(default_factory=list)
    verbatim: bool = True


@dataclass
class Published:
    tables: dict[str, PublishedTable]
    ablations: dict[str, PublishedAblation]
    raw: dict[str, Any]

    def ablation_for(self, method: str) -> PublishedAblation | None:
        return next((a for a in self.ablations.values() if a.method == method), None)

    def any_row(self, model: str) -> PublishedRow | None:
        """A printed row of a zoo model (its printed dataset, model name and FP are the same in every table)."""
        return next((row for table in self.tables.values() for row in table.rows if row.model == model), None)

    def printed_elsewhere(self, model: str, bits: str, method: str, skip: str
                          ) -> tuple[PublishedValue, PublishedTable] | None:
        """A method's number for a cell from the first table other than ``skip`` that prints it (in
        ``published.yaml``'s order), with that table; None when no other table prints it."""
        for name, table in self.tables.items():
            row, column = table.row(model, bits), table.column_of(method)
            value = row.values.get(column) if name != skip and row is not None and column else None
            if value is not None:
                return value, table
        return None

    def paper_fp(self, model: str) -> float | None:
        """The papers' FP teacher top-1 for a zoo model."""
        row = self.any_row(model)
        return None if row is None else row.fp

    def model_text(self, model: str) -> str:
        """``"ImageNet ResNet-18"`` for a printed model, else the zoo name."""
        row = self.any_row(model)
        return model if row is None else f"{row.dataset} {row.model_label}"


def split_row(line: str) -> list[str]:
    """``"| a | b |"`` → ``["a", "b"]``."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_value(text: str) -> PublishedValue | None:
    """A printed cell: ``-`` → None; ``75.11†``, ``91.26 ± 0.49``, ``0.10 (did not converge)`` → a value."""
    text = text.strip()
    if text in ("-", "–", ""):
        return None
    match = _VALUE.match(text)
    if match is None:
        raise ValueError(f"unparseable published value {text!r}")
    std = match["std"]
    return PublishedValue(float(match["mean"]), None if std is None else float(std), match["mark"] or "",
                          match["note"] or "")


def _parse_table(name: str, data: dict[str, Any], models: dict[str, str], methods: dict[str, str],
                 unsupported: dict[str, str] | None = None) -> PublishedTable:
    """One main table; a table's own ``methods`` add to the shared column → method map for that table only."""
    methods = {**methods, **data.get("methods", {})}
    header = split_row(data["header"])
    columns = header[3:]
    rows = []
    for line in data["rows"]:
        cells = split_row(line)
        if len(cells) != len(header):
            raise ValueError(f"{name}: row {line!r} has {len(cells)} cells, header has {len(header)}")
        label = _MODEL_FP.match(cells[1])
        if label is None:
            raise ValueError(f"{name}: model cell {cells[1]!r} is not 'Model (FP)'")
        model = models[f"{cells[0]} | {label['name']}"]
        values = {col: parse_value(cell) for col, cell in zip(columns, cells[3:])}
        rows.append(PublishedRow(cells[0], label["name"], model, cells[2].lower(), float(label["fp"]), values))
    method_of = {col: methods[col] for col in columns if col in methods}
    unsupported = {col: reason for col, reason in (unsupported or {}).items() if col in columns}
    return PublishedTable(name, data["title"], data["source"], columns, method_of, rows, list(data.get("notes", [])),
                          unsupported)


def _parse_ablation(name: str, data: dict[str, Any]) -> PublishedAblation:
    header = split_row(data["header"])
    n_terms = len(ABLATION_TERMS)
    bits = [b.lower() for b in header[n_terms:]]
    rows = []
    for line in data["rows"]:
        cells = split_row(line)
        terms = tuple(cell == "yes" for cell in cells[:n_terms])
        rows.append((terms, {b: parse_value(c) for b, c in zip(bits, cells[n_terms:])}))
    return PublishedAblation(name, data["title"], data["source"], data["method"], data["model"], float(data["fp"]),
                             bits, rows, list(data.get("notes", [])), bool(data.get("verbatim", True)))


@functools.lru_cache(maxsize=1)
def load_published() -> Published:
    """Parse the package's ``published.yaml`` (cached)."""
    raw = yaml.safe_load(resources.files("dfqbench.report").joinpath("published.yaml").read_text(encoding="utf-8"))
    models, methods = raw["models"], raw["methods"]
    unsupported = raw.get("unsupported", {})  # published-only columns that can have no method, with the reason
    tables = {name: _parse_table(name, data, models, methods, unsupported) for name, data in raw["tables"].items()}
    ablations = {name: _parse_ablation(name, data) for name, data in raw["ablations"].items()}
    return Published(tables, ablations, raw)
