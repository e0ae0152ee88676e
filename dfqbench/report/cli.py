"""``dfqbench report``: its arguments (:func:`add_report_parser`) and its output (:func:`run_report`).

Argparse and printing only: the flags become a :class:`dfqbench.report.make.ReportRequest` and
:func:`dfqbench.report.make.make_report` builds the tables; nothing in dfqbench but ``dfqbench.cli`` imports
this module. Reads stored records only. Kept import-light (the heavy modules load inside :func:`run_report`),
so that ``dfqbench.cli`` can build its parser without importing pandas, matplotlib or torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dfqbench.errors import DfqbenchError
from dfqbench.report.make import FORMAT_CHOICES, TABLE_CHOICES, ReportRequest
from dfqbench.report.selection import grid_selection

__all__ = ["FORMAT_CHOICES", "TABLE_CHOICES", "add_report_parser", "grid_selection", "report_request", "run_report"]


def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``report`` subcommand to ``dfqbench``'s subparsers."""
    p = subparsers.add_parser(
        "report", help="the papers' tables (markdown, LaTeX, CSV) and plots, from stored records",
        description="Regenerate AdaSG Table 1, Qimera Table 2 and the AdaSG Table 2 ablation from the records "
                    "in a results folder (finished runs; running, pending and failed ones are counted), with "
                    "the published numbers beside ours, and optionally the game-diagnostic plots.")
    p.add_argument("--results", help="results folder (env DFQBENCH_RESULTS; default ./results)")
    p.add_argument("--grid", help="only the runs of this grid (a shipped name or a YAML file) as its launches into "
                   "--results planned them; its runs with no folder yet count as pending; runs of non-default "
                   "configurations (the grid's overrides) are shown as labelled rows")
    p.add_argument("--protocol", help="keep only runs of this protocol")
    p.add_argument("--where", action="append", default=[], metavar="KEY=VALUE[,VALUE]",
                   help="keep runs whose spec has one of these values at a dotted key, named as in overrides, e.g. "
                   "method=gdfq,qimera bits=w4a4 method.ds_weight=0 quant.tracker=ema train.epochs=8 (repeatable; all "
                   "must hold; method_config.X is an alias of method.X); the kept runs of non-default configurations "
                   "are shown as labelled rows")
    p.add_argument("--all-configurations", action="store_true",
                   help="also show, as their own labelled rows, runs of other configurations than a cell's default "
                   "(the method's defaults and presets for the cell; without this they are only counted in a footnote)")
    p.add_argument("--table", choices=TABLE_CHOICES, default="all",
                   help="which layout (default all: Table 1, Qimera Table 2, SynQ Table 1 where a run of IntraQ, HAST "
                   "or SynQ exists, ablations where a term is off, the real-data reference where such runs exist); "
                   "synq_table1: SynQ Table 1 always; methods: the comparison view, a column per method and "
                   "configuration in the results (not-data-free runs only when --where method=… names them); "
                   "real_data: the real-data reference (real_kd, not data-free) beside the best data-free method")
    p.add_argument("--baseline", metavar="METHOD[:KEY=VALUE,...]",
                   help="with --table methods: the column the others are compared with (Δ and Welch's test), e.g. "
                   "gdfq (its default configuration, or its only one) or gdfq:quant.tracker=ema")
    p.add_argument("--format", choices=FORMAT_CHOICES, default="markdown",
                   help="markdown (default); latex: table floats to \\input (booktabs; run status in comments only); "
                   "latex-document: the same in a complete document; csv: one row per cell; csv-runs: one row per run")
    p.add_argument("--out", help="write the tables to this file (default: standard output)")
    p.add_argument("--metric", choices=("best", "final"), default="best",
                   help="best test top-1 over epochs (default, as the papers report) or the final epoch's")
    p.add_argument("--all-rows", action="store_true", help="also the papers' rows without any run of ours")
    p.add_argument("--all-columns", action="store_true", help="also the papers' methods dfqbench does not implement")
    p.add_argument("--plots", metavar="DIR", help="also write the figures (PNG and PDF) into DIR")
    p.add_argument("--cell", action="append", default=[], metavar="MODEL[:BITS]",
                   help="with --plots: only these cells, e.g. resnet20_cifar10:w4a4 (repeatable)")
    p.add_argument("--compare", metavar="OTHER_RESULTS",
                   help="compare this results folder (B) against --results (A) cell by cell instead of the tables")
    return p


def report_request(args: argparse.Namespace) -> ReportRequest:
    """The flags of ``dfqbench report`` as a :class:`dfqbench.report.make.ReportRequest`."""
    return ReportRequest(results=args.results, grid=args.grid, protocol=args.protocol, where=list(args.where),
                         table=args.table, format=args.format, metric=args.metric, all_rows=args.all_rows,
                         all_columns=args.all_columns, all_configurations=args.all_configurations,
                         compare=args.compare, baseline=args.baseline)


def check_plots_folder(folder: Path) -> None:
    """``--plots DIR`` is a folder, or can be made one, that this process can write (``/dev/null/x``, a file, a
    read-only folder: one line before anything is read or written)."""
    import os

    if folder.exists() and not folder.is_dir():
        raise DfqbenchError(f"invalid --plots '{folder}': a file, not a folder; give a folder for the figures")
    parent = folder
    while not parent.exists():  # the nearest existing folder is where the missing ones would be made
        parent = parent.parent
    if not parent.is_dir():
        raise DfqbenchError(f"invalid --plots '{folder}': '{parent}' is not a folder, so no folder can be made "
                            "under it; give a folder for the figures")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DfqbenchError(f"invalid --plots '{folder}': '{parent}' is not writable; give a folder you can write")


def run_report(args: argparse.Namespace) -> int:
    from dfqbench.report.make import make_report

    if args.cell and not args.plots:
        raise DfqbenchError("--cell selects plots; give --plots DIR too")
    if args.plots:
        check_plots_folder(Path(args.plots))

    def warn(path: Path, why: str) -> None:  # skipped, never fatal: one bad record must not hide the others
        print(f"dfqbench: warning: skipped {path}: {why}", file=sys.stderr)

    report = make_report(report_request(args), warn)
    scan, tables, text = report.scan, report.tables, report.text
    if args.out:
        from dfqbench.store import atomic_write_bytes

        atomic_write_bytes(Path(args.out), text.encode("utf-8"))  # never half-written
        what = (f"{len(scan.records) + len(scan.unfinished)} runs" if args.format == "csv-runs"
                else f"{len(tables)} table{'s' if len(tables) != 1 else ''}")
        print(f"wrote {args.out} ({what}, {args.format}); {scan.status_line()}")
    else:
        sys.stdout.write(text)
    if args.plots:
        from dfqbench.report.plots import make_plots
        from dfqbench.store.grid_index import grid_name

        try:
            written = make_plots(scan.records, report.published, args.metric, Path(args.plots), args.cell,
                                 all_configurations=args.all_configurations or bool(args.where)
                                 or args.grid is not None or args.table == "methods",
                                 prefix=f"{grid_name(args.grid)}_" if args.grid else "", tables=tables)
        except OSError as exc:  # what check_plots_folder cannot foresee (/proc, a full disk): one line
            from dfqbench.store.files import cannot_write

            raise cannot_write(Path(exc.filename or args.plots), exc) from None
        print(f"wrote {len(written)} figure files to {args.plots}"
              + ("" if written else " (no finished run with a top-1 in the chosen cells)"),
              file=sys.stderr if not args.out else sys.stdout)
    return 0
