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

TABLE_CHOICES = ("all", "table1", "qimera_t2", "synq_table1", "ablation", "methods", "real_data")
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
    baseline: str | None = None  # with table="methods": the column Δ and Welch's test compare against


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
    if request.baseline is not None and request.table != "methods":
        raise DfqbenchError(f"--baseline {request.baseline!r} picks a column of the comparison view; give --table "
                            f"methods too (--table is {request.table!r})")
    if request.table == "methods" and request.compare is not None:
        raise DfqbenchError("--compare compares two results folders cell by cell; choices of --table with it: "
                            + ", ".join(t for t in TABLE_CHOICES if t != "methods"))
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
        from dfqbench.report.reference import asked_for, reference_tables, split_scan

        data_free, reference = split_scan(scan)  # not-data-free runs (real_kd) never enter a data-free table
        # every configuration that was run, labelled, when asked for or when the runs were chosen (--where, --grid)
        all_configurations = request.all_configurations or bool(request.where) or request.grid is not None
        if request.table == "methods":  # the comparison view: every method and configuration side by side
            from dfqbench.report.versus import methods_tables

            shown = scan if asked_for(wheres, reference) else data_free  # real data only when --where names it
            tables = methods_tables(shown, published, request.metric, request.baseline)
        elif request.table == "real_data":
            tables = reference_tables(reference, data_free, request.metric, all_configurations)
        else:
            tables = build_tables(data_free, published, request.table, request.metric, request.all_rows,
                                  request.all_columns, all_configurations=all_configurations)
            if request.table in ("all", "synq_table1"):  # under "all" only where a run of its methods exists
                from dfqbench.report.synq_table import synq_tables

                tables += synq_tables(data_free, published, request.metric, all_configurations,
                                      only_with_runs=request.table == "all")
            if request.table == "all":  # the real-data reference, in its own table, where such runs exist
                tables += reference_tables(reference, data_free, request.metric, all_configurations)
        preamble = [f"dfqbench report: {scan.status_line()}."] + preamble
        kept_out = len(reference.records) + len(reference.unfinished)
        if kept_out and request.table not in ("all", "real_data") and not (
                request.table == "methods" and asked_for(wheres, reference)):
            preamble.append(f"{kept_out} not-data-free run{'s' if kept_out > 1 else ''} (real training images) kept "
                            "out of this table: --table real_data shows them")
        from dfqbench.report.stale import mark_stale

        preamble += mark_stale(tables, scan)  # a footnote under each table showing stale runs, and one line here
        if not tables:
            preamble.append("No runs match: nothing to tabulate.")
        if scan.unreadable:
            preamble.append(f"Unreadable records ({len(scan.unreadable)}): "
                            + "; ".join(f"{p.parent.name}/{p.name} ({why})" for p, why in scan.unreadable[:5])
                            + (" …" if len(scan.unreadable) > 5 else ""))
    return Report(render(tables, request.format, preamble if request.format != "csv" else ()), scan, tables, published)
