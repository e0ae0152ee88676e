"""The report's intermediate table: labels, column groups and footnotes, independent of the output format.

Builders (:mod:`dfqbench.report.tables`, :mod:`dfqbench.report.compare`) fill a :class:`Table`; renderers
(:mod:`dfqbench.report.render`) turn it into markdown, LaTeX or CSV. A column *group* is one method (or one
bit-width) with sub-columns, e.g. ours / paper / Δ: markdown joins them in one cell, LaTeX gives each its
own column under a ``\\cmidrule``, CSV ignores the layout and writes :attr:`Table.records` (one row per cell).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPERSCRIPTS = "ᵃᵇᶜᵈᵉᶠᵍʰⁱʲᵏˡᵐⁿᵒᵖʳˢᵗᵘᵛʷˣʸᶻ"  # footnote marks a, b, c, … (there is no superscript q)
SUPERSCRIPT_LETTERS = "abcdefghijklmnoprstuvwxyz"


@dataclass(frozen=True)
class Text:
    """One sub-cell's text; ``bold`` marks the best value (rendered ``**…**`` / ``\\textbf{…}``); ``status``
    (unfinished runs, e.g. ``; +1 pending``) follows the text in markdown and stays out of LaTeX's table body."""

    text: str
    bold: bool = False
    status: str = ""


@dataclass(frozen=True)
class Group:
    title: str
    subtitles: tuple[str, ...]


@dataclass
class TableRow:
    labels: list[str]
    cells: list[list[Text]]  # one list per group, as many Texts as the group has sub-columns


@dataclass
class Table:
    """A rendered-format-free table with its caption, footnotes and long-form data."""

    key: str
    title: str
    caption: str
    label_columns: list[str]
    groups: list[Group]
    rows: list[TableRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    status: list[str] = field(default_factory=list)  # run counts: after the caption in markdown, comments in LaTeX
    cell_status: list[str] = field(default_factory=list)  # per-cell unfinished runs (LaTeX comments)
    settings: str = ""  # settings every column shares, left out of the column titles (said under its figure)


class Footnotes:
    """Assigns superscript marks (ᵃ, ᵇ, …) to footnote texts in order of first use; equal texts share a mark."""

    def __init__(self) -> None:
        self._marks: dict[str, str] = {}
        self._plain: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self._marks:
            index = len(self._marks)
            self._marks[text] = SUPERSCRIPTS[index] if index < len(SUPERSCRIPTS) else f"[{index + 1}]"
        return self._marks[text]

    def note(self, text: str) -> None:
        """A note without a mark (printed after the marked ones, once)."""
        if text not in self._plain:
            self._plain.append(text)

    def lines(self) -> list[str]:
        return self.marked() + self._plain

    def marked(self) -> list[str]:
        """The marked footnotes, ``ᵃ text``, in order of first use."""
        return [f"{mark} {text}" for text, mark in self._marks.items()]

    def plain(self) -> list[str]:
        """The notes without a mark, in order of first use."""
        return list(self._plain)
