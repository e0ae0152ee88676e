"""A report from a results folder: the papers' tables (or a per-run CSV, or a comparison of two folders) as text.

What ``dfqbench report`` prints or writes (:mod:`dfqbench.report.cli` adds the output file and the plots).
Reads stored records only; torch-free. The table builders and renderers load inside
:func:`make_report`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from dfqbench.errors import DfqbenchError

if TYPE_CHECKING:
    from dfqbench.report.load import Scan

TABLE_CHOICES = ("all", "table1", "qimera_t2", "ablation")
FORMAT_CHOICES = ("markdown", "latex", "latex-document", "csv", "csv-runs")


@dataclass(kw_only=True)
class ReportRequest:
    """Which runs (``results``, ``grid``, ``protocol``, ``where``) and which layout; see ``dfqbench report -h``."""

    results: str | Path | None = None
    grid: str | None = None
    protocol: str | None = None
    where: list[str] = field(default_factory=list)  # KEY=VALUE[,VALUE] filters on the spec's dotted keys
    table: str = "all"
    format: str = "markdown"
    metric: str = "best"
    all_rows: bool = False
    all_columns: bool = False
    all_configurations: bool = False
    compare: str | Path | None = None  # another results folder (B) to compare against ``results`` (A)


@dataclass
class Report:
    text: str
    scan: "Scan"
    tables: list[Any]
    published: Any


def make_report(request: ReportRequest, skipped: Callable[[Path, str], None] = lambda path, why: None) -> Report:
    """The report's text, the scan and tables behind it; ``skipped`` is told each unreadable record (skipped,
    never fatal: one bad record must not hide the others)."""
    from dfqbench.report.compare import compare_scans
    from dfqbench.report.load import Where, filter_scan, scan_results
    from dfqbench.report.published import load_published
    from dfqbench.report.render import render
    from dfqbench.report.selection import grid_selection
    from dfqbench.report.tables import build_tables

    if request.format == "csv-runs" and request.compare is not None:
        raise DfqbenchError("--format csv-runs lists the runs of one results folder; choices with --compare are "
                            "markdown, latex, latex-document, csv")
    wheres = [Where.parse(text) for text in request.where]
    scan = scan_results(request.results)
    preamble = []
    run_ids = None
    if request.grid is not None:
        run_ids, missing, preamble = grid_selection(request.grid, scan.root)
        scan.unfinished += missing
    if request.protocol is not None:
        wheres.append(Where("protocol", (request.protocol,)))
    scan = filter_scan(scan, wheres, run_ids)
    for path, why in scan.unreadable:
        skipped(path, why)
    published = load_published()
    if request.format == "csv-runs":
        from dfqbench.report.runs import runs_csv

        return Report(runs_csv(scan), scan, [], published)
    if request.compare is not None:
        other = filter_scan(scan_results(request.compare), wheres, run_ids)
        tables = [compare_scans(scan, other, request.metric)]
    else:
        tables = build_tables(scan, published, request.table, request.metric, request.all_rows, request.all_columns,
                              all_configurations=request.all_configurations or bool(request.where)
                              or request.grid is not None)
        preamble = [f"dfqbench report: {scan.status_line()}."] + preamble
        if not tables:
            preamble.append("No runs match: nothing to tabulate.")
        if scan.unreadable:
            preamble.append(f"Unreadable records ({len(scan.unreadable)}): "
                            + "; ".join(f"{p.parent.name}/{p.name} ({why})" for p, why in scan.unreadable[:5])
                            + (" …" if len(scan.unreadable) > 5 else ""))
    return Report(render(tables, request.format, preamble if request.format != "csv" else ()), scan, tables, published)
