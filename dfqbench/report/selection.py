"""Which runs a report or :func:`dfqbench.load_results` shows: a grid's runs, as its launches planned them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dfqbench.errors import DfqbenchError


def grid_selection(grid: str, root: Path) -> tuple[set[str], list[Any], list[str]]:
    """(run ids of the grid's runs, Unfinished entries for runs without a folder yet, summary lines), from the
    grid's index written when it was launched (:mod:`dfqbench.store.grid_index`): no re-planning, no torch.

    The grid's runs are its cells' distinct run ids (a cell that duplicates another's run is no second run), each
    counted in its state in the store (:func:`dfqbench.store.run_state`: pending, running, done, failed, lost),
    whether this grid's launch trained it or an earlier run had; cells that are no run (excluded, unsupported,
    skipped, invalid, duplicates) are counted apart."""
    from collections import Counter

    from dfqbench.store.grid_index import grid_name, grid_runs, read_grid_index
    from dfqbench.report.load import Unfinished
    from dfqbench.store import CELL_ONLY_STATES, RUN_STATES, ResultsStore, run_state

    store = ResultsStore(root)
    name = grid_name(grid)
    cells = read_grid_index(root, name)
    if cells is None:
        raise DfqbenchError(f"grid {name!r} was never launched into '{root}' (report --grid shows the runs its launches "
                            f"planned); run `dfqbench run --grid {grid} --results {root}`, or report without --grid")
    missing, unknown = [], 0
    states: Counter = Counter()  # per run of the grid (one per run id): its state in the store, as `status` names it
    no_run: Counter = Counter()  # cells that are no run of their own: duplicates of another cell's run, excluded, …
    specs: dict[str, Any] = {}  # run id → the spec of its first cell
    for cell in cells.values():
        if cell.get("duplicate_of"):
            no_run["duplicate"] += 1
        elif cell.get("run_id") is None:
            if cell.get("status") in CELL_ONLY_STATES:
                no_run[cell["status"]] += 1
            else:
                unknown += 1
        else:
            specs.setdefault(cell["run_id"], cell.get("spec"))
    runs = grid_runs(cells)  # the grid's runs, counted as `status` counts them
    for run_id, run_name in runs.items():
        folder = store.run(run_name)
        states[run_state(folder).state] += 1
        if not folder.path.exists() and isinstance(specs.get(run_id), dict):
            missing.append(Unfinished(folder.path, "pending", specs[run_id]))
    run_ids = set(runs)
    counted = ", ".join(f"{states[s]} {s}" for s in RUN_STATES if states[s])
    lines = [f"Grid {name}: {len(run_ids)} run{'' if len(run_ids) == 1 else 's'}" + (f" ({counted})" if counted else "")
             + ("; cells without a run of their own: " + ", ".join(f"{n} {s}" for s, n in sorted(no_run.items()))
                if no_run else "")
             + (f"; {unknown} runs without a known run id (teacher not downloaded yet) are not shown" if unknown else "")]
    return run_ids, missing, lines
