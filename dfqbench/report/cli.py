"""``dfqbench report``: its arguments (:func:`add_report_parser`) and what it does (:func:`run_report`).

Reads stored records only. Kept import-light (the heavy modules load inside :func:`run_report`), so that
``dfqbench.cli`` can build its parser without importing pandas, matplotlib or torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dfqbench.errors import DfqbenchError

TABLE_CHOICES = ("all", "table1", "qimera_t2", "ablation")
FORMAT_CHOICES = ("markdown", "latex", "latex-document", "csv", "csv-runs")


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
                   help="which layout (default all: Table 1, Qimera Table 2, ablations where a term is off)")
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


def grid_selection(grid: str, root: Path) -> tuple[set[str], list[Any], list[str]]:
    """(run ids of the grid's runs, Unfinished entries for runs without a folder yet, summary lines), from the
    grid's index written when it was launched (:mod:`dfqbench.grid_index`): no re-planning, no torch."""
    from collections import Counter

    from dfqbench.grid_index import grid_name, read_grid_index
    from dfqbench.report.load import Unfinished
    from dfqbench.store import CELL_ONLY_STATES, ResultsStore

    store = ResultsStore(root)
    name = grid_name(grid)
    cells = read_grid_index(root, name)
    if cells is None:
        raise DfqbenchError(f"grid {name!r} was never launched into '{root}' (report --grid shows the runs its launches "
                            f"planned); run `dfqbench run --grid {grid} --results {root}`, or report without --grid")
    run_ids, missing, unknown = set(), [], 0
    statuses: Counter = Counter()
    for cell in cells.values():
        if cell.get("duplicate_of"):
            statuses["duplicate"] += 1
            continue
        if cell.get("run_id") is None:
            statuses[cell.get("status", "?")] += 1
            unknown += cell.get("status") not in CELL_ONLY_STATES
            continue
        run_ids.add(cell["run_id"])
        folder = store.run(cell["run_name"])
        statuses["done" if folder.has_record() else "not finished"] += 1
        if not folder.path.exists() and isinstance(cell.get("spec"), dict):
            missing.append(Unfinished(folder.path, "pending", cell["spec"]))
    lines = [f"Grid {name}: {len(cells)} cells as launched (" + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
             + ")" + (f"; {unknown} runs without a known run id (teacher not downloaded yet) are not shown" if unknown else "")]
    return run_ids, missing, lines


def run_report(args: argparse.Namespace) -> int:
    from dfqbench.report.compare import compare_scans
    from dfqbench.report.load import Where, filter_scan, scan_results
    from dfqbench.report.published import load_published
    from dfqbench.report.render import render
    from dfqbench.report.tables import build_tables

    if args.cell and not args.plots:
        raise DfqbenchError("--cell selects plots; give --plots DIR too")
    if args.format == "csv-runs" and args.compare is not None:
        raise DfqbenchError("--format csv-runs lists the runs of one results folder; choices with --compare are "
                            "markdown, latex, latex-document, csv")
    wheres = [Where.parse(text) for text in args.where]
    scan = scan_results(args.results)
    preamble = []
    run_ids = None
    if args.grid is not None:
        run_ids, missing, preamble = grid_selection(args.grid, scan.root)
        scan.unfinished += missing
    if args.protocol is not None:
        wheres.append(Where("protocol", (args.protocol,)))
    scan = filter_scan(scan, wheres, run_ids)
    for path, why in scan.unreadable:  # skipped, never fatal: one bad record must not hide the others
        print(f"dfqbench: warning: skipped {path}: {why}", file=sys.stderr)
    published = load_published()
    if args.format == "csv-runs":
        from dfqbench.report.runs import runs_csv

        tables, text = [], runs_csv(scan)
    elif args.compare is not None:
        other = filter_scan(scan_results(args.compare), wheres, run_ids)
        tables = [compare_scans(scan, other, args.metric)]
    else:
        tables = build_tables(scan, published, args.table, args.metric, args.all_rows, args.all_columns,
                              all_configurations=args.all_configurations or bool(args.where) or args.grid is not None)
        preamble = [f"dfqbench report: {scan.status_line()}."] + preamble
        if not tables:
            preamble.append("No runs match: nothing to tabulate.")
        if scan.unreadable:
            preamble.append(f"Unreadable records ({len(scan.unreadable)}): "
                            + "; ".join(f"{p.parent.name}/{p.name} ({why})" for p, why in scan.unreadable[:5])
                            + (" …" if len(scan.unreadable) > 5 else ""))
    if args.format != "csv-runs":
        text = render(tables, args.format, preamble if args.format != "csv" else ())
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

        written = make_plots(scan.records, published, args.metric, Path(args.plots), args.cell)
        print(f"wrote {len(written)} figure files to {args.plots}"
              + ("" if written else " (no finished runs with logged diagnostics in the chosen cells)"),
              file=sys.stderr if not args.out else sys.stdout)
    return 0
