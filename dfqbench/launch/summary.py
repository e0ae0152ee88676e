"""Plain-text summaries of a plan: the `--dry-run` report and `dfqbench status --grid`.

The matrix has one row per combination of the varying keys other than method and seed and one column
per method; an entry is the number of runs (``d/n`` once some are done), ``-`` for cells the grid
excludes, ``n/a`` for cells the method does not support, ``skip`` for cells without teacher weights (a single
weights file set for another model) and ``!`` for invalid cells.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from dfqbench.launch.banks import bank_document, bank_lines
from dfqbench.launch.plan import Plan, PlannedCell
from dfqbench.store import CELL_ONLY_STATES, RUN_STATES

MAX_LISTED = 12


def _row_key(cell: PlannedCell, keys: list[str]) -> tuple:
    return tuple(str(cell.cell.values.get(k)) for k in keys)


def varying(plan: Plan) -> dict[str, int]:
    """Keys whose value differs between the planned cells (after filters and --seeds), with their counts."""
    import json

    keys = list(dict.fromkeys([*plan.grid.varying(), *(k for c in plan.cells for k in c.cell.values)]))
    counts = {}
    for key in keys:
        distinct = {json.dumps(c.cell.values.get(key), sort_keys=True, default=str) for c in plan.cells}
        if len(distinct) > 1 and key != "dataset":
            counts[key] = len(distinct)
    return counts


def matrix(plan: Plan) -> list[str]:
    keys = list(varying(plan))
    row_keys = [k for k in keys if k not in ("method", "seed")]
    if "variant" in row_keys:  # a variant names its overrides: show the label, not the dotted keys
        row_keys = [k for k in row_keys if "." not in k]
    methods = list(dict.fromkeys(c.cell.method for c in plan.cells))
    entries: dict[tuple, dict[str, list[PlannedCell]]] = defaultdict(lambda: defaultdict(list))
    for c in plan.cells:
        if c.duplicate_of is None:
            entries[_row_key(c, row_keys)][c.cell.method].append(c)
    header = [*row_keys, *methods] if row_keys else ["", *methods]
    rows = []
    for key, by_method in entries.items():
        rows.append([*key] if row_keys else ["runs"])
        for m in methods:
            rows[-1].append(_entry(by_method.get(m, [])))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(v).ljust(w) if i < max(1, len(row_keys)) else str(v).rjust(w)  # noqa: E731
                              for i, (v, w) in enumerate(zip(r, widths)))
    return [fmt(header), *(fmt(r) for r in rows)]


def _entry(cells: list[PlannedCell]) -> str:
    if not cells:
        return ""
    runs = [c for c in cells if c.is_run]
    if runs:
        done = sum(c.status == "done" for c in runs)
        failed = sum(c.status in ("failed", "lost") for c in runs)
        text = f"{done}/{len(runs)}" if done else str(len(runs))
        return text + ("!" * bool(failed))
    status = cells[0].status
    return {"excluded": "-", "unsupported": "n/a", "skipped": "skip", "invalid": "!"}.get(status, "?")


def not_data_free(plan: Plan) -> tuple[list[str], int]:
    """The planned runs' methods that are not data-free (``data_free = False``: real_kd's real training images),
    and how many runs they have: said apart in the dry run, as the report keeps them apart."""
    runs = [c.cell.method for c in plan.runs() if c.decision is not None and not c.decision.data_free]
    return sorted(set(runs)), len(runs)


def _reasons(cells: list[PlannedCell]) -> list[str]:
    counts = Counter(c.reason or "" for c in cells)
    return [f"  {n} × {reason}" for reason, n in counts.most_common()]


def describe(plan: Plan, retry_failed: bool = False, rerun_stale: bool = False) -> str:
    """The whole report: header, counts, matrix, estimate, and the reasons for every non-run cell."""
    grid, counts = plan.grid, plan.counts()
    lines = [f"grid {grid.name} ({grid.path})"]
    if grid.description:
        lines.append(f"  {grid.description}")
    shown = ", ".join(f"{k} ×{n}" for k, n in varying(plan).items())
    lines.append(f"varying: {shown or 'nothing'}")
    n_runs = len(plan.runs())
    parts = [f"{n_runs} runs"] + [f"{counts[s]} {s}" for s in ("excluded", "unsupported", "skipped", "invalid")
                                  if counts[s]]
    if counts["duplicate"]:
        parts.append(f"{counts['duplicate']} duplicates of another cell's run")
    lines.append(f"cells: {len(plan.cells)} = " + " + ".join(parts)
                 + (f"  ({plan.filtered_out} more filtered out by --only)" if plan.filtered_out else ""))
    stale = plan.stale()
    lines.append("runs: " + ", ".join(f"{counts[s]} {s}" for s in RUN_STATES)
                 + (f" ({len(stale)} of them stale)" if stale else ""))
    lines.append("")
    lines.extend(matrix(plan))
    lines.append("")
    todo = plan.to_launch(retry_failed, rerun_stale)
    lines.append(f"to run: {len(todo)} runs, estimated {plan.estimate(todo).text()}")
    lines.extend(bank_lines(plan, todo))  # image banks: counted apart from the runs
    real, n_real = not_data_free(plan)
    if real:
        lines.append(f"NOT data-free: {n_real} runs of {', '.join(real)} fine-tune on real training images (a "
                     "real-data reference, reported apart from the data-free methods)")
    for status, title in (("excluded", "excluded by the grid"), ("unsupported", "unsupported by the method"),
                          ("skipped", "skipped: no teacher weights (no run folder is made for them)"),
                          ("invalid", "invalid (the grid will not start until these are fixed or filtered out "
                                      "with --only)")):
        cells = [c for c in plan.cells if c.status == status]
        if cells:
            lines.append(f"{title}: {len(cells)} cells")
            lines.extend(_reasons(cells))
    lines.extend(run_details(plan.runs()))
    lines.extend(stale_details(stale, rerun_stale))
    return "\n".join(lines)


def stale_details(stale: list[PlannedCell], rerun_stale: bool = False) -> list[str]:
    """The stale runs (done, but computed by method code that changed since) with what changed."""
    if not stale:
        return []
    what = "trained again from scratch by this launch" if rerun_stale else "--rerun-stale trains them again"
    lines = [f"stale: {len(stale)} done runs were computed by method code that changed since ({what})"]
    lines += [f"  {c.name}: {c.code.reason}" for c in stale[:MAX_LISTED]]
    if len(stale) > MAX_LISTED:
        lines.append(f"  … and {len(stale) - MAX_LISTED} more")
    return lines


def run_details(runs: list[PlannedCell]) -> list[str]:
    """Failed, lost and running runs with their reasons (at most MAX_LISTED of each)."""
    lines = []
    for status, title in (("failed", "failed (re-run with --retry-failed)"),
                          ("lost", "lost: died without a result (running the grid again resumes them)"),
                          ("running", "running")):
        cells = [c for c in runs if c.status == status]
        if not cells:
            continue
        lines.append(f"{title}: {len(cells)}")
        for c in cells[:MAX_LISTED]:
            lines.append(f"  {c.name}: {c.reason}")
        if len(cells) > MAX_LISTED:
            lines.append(f"  … and {len(cells) - MAX_LISTED} more")
    pending_unknown = [c for c in runs if c.status == "pending" and c.run_name is None]
    if pending_unknown:
        lines.append(f"pending with an unknown run id: {len(pending_unknown)}")
        lines.extend(_reasons(pending_unknown))
    return lines


def plan_document(plan: Plan, retry_failed: bool = False, rerun_stale: bool = False) -> dict:
    """The dry-run report as one JSON-able document (``dfqbench run --grid … --dry-run --json``): the grid, the
    counts (one status per cell: they sum to ``cells_total``), the stale runs among the done ones, the estimate
    and every cell with its status, reason, run and code state (done runs: current, stale or unknown)."""
    grid, counts = plan.grid, plan.counts()
    todo = plan.to_launch(retry_failed, rerun_stale)
    estimate = plan.estimate(todo)
    cells = []
    for c in plan.cells:
        cells.append({
            "label": c.cell.label, "method": c.cell.method, "model": c.cell.model, "bits": c.cell.bits,
            "seed": c.cell.seed, "protocol": plan.options.protocol or c.cell.protocol, "variant": c.cell.variant,
            "profile": c.cell.profile, "dataset": c.cell.values.get("dataset"),
            "overrides": plan.options.overrides_for(c.cell), "status": c.status, "reason": c.reason,
            "run_name": c.run_name, "run_id": c.run_id, "duplicate_of": c.duplicate_of,
            "code": c.code.state if c.code else None, "code_reason": c.code.reason if c.code else None,
            "to_run": any(c is t for t in todo),
            "bank": (c.decision.bank or {}).get("name") if c.decision is not None else None,
        })
    return {
        "grid": grid.name, "grid_file": str(grid.path), "description": grid.description,
        "results": str(plan.options.results), "varying": varying(plan),
        "cells_total": len(plan.cells), "filtered_out": plan.filtered_out, "runs": len(plan.runs()),
        "counts": {s: counts[s] for s in (*RUN_STATES, *CELL_ONLY_STATES, "duplicate")},
        "stale": len(plan.stale()),
        "to_run": len(todo),
        "estimate": {"gpu_hours": estimate.hours, "formula_runs": estimate.formula_runs,
                     "measured_runs": estimate.measured_runs, "unknown_runs": estimate.unknown_runs,
                     "basis": estimate.basis()},
        "cells": cells,
        **bank_document(plan, todo),  # image banks, their states and synthesis estimate
        "not_data_free": dict(zip(("methods", "runs"), not_data_free(plan))),
    }
